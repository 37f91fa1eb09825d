//! The profiles shipped in `profiles/`, compiled into the binary (one file per genre).

/// `(genre, TOML text)` of every shipped profile file.
pub const FILES: &[(&str, &str)] = &[
    (
        "battle_royale",
        include_str!("../../../../profiles/battle_royale.toml"),
    ),
    (
        "card_board",
        include_str!("../../../../profiles/card_board.toml"),
    ),
    (
        "competitive",
        include_str!("../../../../profiles/competitive.toml"),
    ),
    ("coop", include_str!("../../../../profiles/coop.toml")),
    (
        "extraction",
        include_str!("../../../../profiles/extraction.toml"),
    ),
    (
        "fighting",
        include_str!("../../../../profiles/fighting.toml"),
    ),
    ("fps", include_str!("../../../../profiles/fps.toml")),
    ("horror", include_str!("../../../../profiles/horror.toml")),
    ("mmo", include_str!("../../../../profiles/mmo.toml")),
    ("moba", include_str!("../../../../profiles/moba.toml")),
    ("party", include_str!("../../../../profiles/party.toml")),
    (
        "platformer",
        include_str!("../../../../profiles/platformer.toml"),
    ),
    ("racing", include_str!("../../../../profiles/racing.toml")),
    (
        "roguelike",
        include_str!("../../../../profiles/roguelike.toml"),
    ),
    ("rpg", include_str!("../../../../profiles/rpg.toml")),
    ("sandbox", include_str!("../../../../profiles/sandbox.toml")),
    (
        "simulation",
        include_str!("../../../../profiles/simulation.toml"),
    ),
    ("sports", include_str!("../../../../profiles/sports.toml")),
    (
        "strategy",
        include_str!("../../../../profiles/strategy.toml"),
    ),
    (
        "survival",
        include_str!("../../../../profiles/survival.toml"),
    ),
    (
        "tower_defense",
        include_str!("../../../../profiles/tower_defense.toml"),
    ),
];

//! The NAT matrix in simulation: every pair of NAT models and both players behind one
//! NAT, over several seeds.

use super::*;

const MODELS: [NatModel; 4] = [
    NatModel::CONE,
    NatModel::FULL_CONE,
    NatModel::RESTRICTED,
    NatModel::SYMMETRIC,
];
const SEEDS: u64 = 8;

fn scenario(a: NatModel, b: Option<NatModel>, seed: u64) -> Scenario {
    Scenario {
        a,
        b,
        seed,
        wan_delay: Duration::from_millis(20),
        duration: Duration::from_secs(45),
        hints: true,
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

#[test]
fn the_whole_nat_matrix_connects_directly_unless_both_sides_are_symmetric() {
    let mut pairs: Vec<(NatModel, Option<NatModel>)> = Vec::new();
    for (i, a) in MODELS.iter().enumerate() {
        for b in &MODELS[i..] {
            pairs.push((*a, Some(*b)));
        }
    }
    pairs.push((NatModel::SYMMETRIC, None));
    eprintln!(
        "NAT A       NAT B        seeds  direct  relay  session (max)  direct (max)  spray pkts (max)"
    );
    for (a, b) in pairs {
        let relay_only = a.hard() && b.is_some_and(|b| b.hard());
        let (mut direct, mut relay) = (0, 0);
        let (mut worst_session, mut worst_direct, mut worst_spray) = (None, None, 0);
        for seed in 0..SEEDS {
            let o = run(&scenario(a, b, seed));
            let label = format!(
                "{} / {} seed {seed}: {o:?}",
                a.name,
                b.map_or("same NAT", |b| b.name)
            );
            // Both probes classified their NAT as modelled.
            for (report, model) in [(&o.nat_a, a), (&o.nat_b, b.unwrap_or(a))] {
                let hint = report.as_ref().and_then(NatReport::hint);
                assert_eq!(hint.map(|h| h.hard), Some(model.hard()), "{label}");
            }
            assert!(o.session_after.is_some(), "never connected: {label}");
            assert_eq!(o.path_a, o.path_b, "{label}");
            match o.path_b {
                PathKind::Direct => direct += 1,
                PathKind::Relay => relay += 1,
                _ => panic!("not connected at the end: {label}"),
            }
            if relay_only {
                assert_eq!(o.path_b, PathKind::Relay, "{label}");
                assert_eq!(o.spray_packets, 0, "{label}");
            } else {
                assert_eq!(o.path_b, PathKind::Direct, "{label}");
            }
            // Birthday punching is bounded: 3 rounds of 3 × 256 from the hard side.
            assert!(o.spray_packets <= 3 * 3 * 256, "{label}");
            worst_session = worst_session.max(o.session_after);
            worst_direct = worst_direct.max(o.direct_after);
            worst_spray = worst_spray.max(o.spray_packets);
        }
        eprintln!(
            "{:<11} {:<12} {:>5} {:>7} {:>6} {:>14} {:>13} {:>17}",
            a.name,
            b.map_or("(same NAT)", |b| b.name),
            SEEDS,
            direct,
            relay,
            secs(worst_session),
            secs(worst_direct),
            worst_spray
        );
    }
}

#[test]
fn a_run_is_determined_by_its_seed() {
    let s = scenario(NatModel::CONE, Some(NatModel::SYMMETRIC), 3);
    assert_eq!(run(&s), run(&s));
}

#[test]
fn without_birthday_punching_cone_and_symmetric_stay_relayed() {
    // The control: the same pair, but no NAT hints are published, so neither side knows
    // to punch. It still connects, through the relay, and never goes direct.
    for seed in 0..4 {
        let o = run(&Scenario {
            hints: false,
            ..scenario(NatModel::CONE, Some(NatModel::SYMMETRIC), seed)
        });
        assert_eq!(o.path_b, PathKind::Relay, "{o:?}");
        assert_eq!(o.direct_after, None, "{o:?}");
        assert_eq!(o.spray_packets, 0, "{o:?}");
    }
}

//! The domain rules: parties, membership, addresses, liveness and signalling.

use std::net::IpAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use lanrage_proto::api::{
    CandidatesRequest, ChallengeResponse, CreatePartyRequest, JoinPartyRequest, MemberView,
    PartyResponse, PartyView, ServerMessage, TokenRequest, TokenResponse,
};
use lanrage_proto::{DeviceKey, InviteCode, PartyId, PartySecret};
use rand::RngCore;
use sqlx::SqliteConnection;
use tokio::sync::Mutex;

use crate::ControlConfig;
use crate::auth::{self, Challenges};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::limits::{Limiter, client_key};
use crate::net::PartyNetwork;
use crate::store::{self, PartyRow, Store};

/// Hard ceiling on party size: every member keeps a WireGuard session to every other.
pub const MAX_PARTY_SIZE: u32 = 250;
/// Host offset of the party's host (`.1`); members get the lowest free from `.2`.
const HOST_OFFSET: u32 = 1;
const FIRST_MEMBER_OFFSET: u32 = 2;
/// Most candidate addresses one device may publish.
const MAX_CANDIDATES: usize = 16;

/// Unix time in milliseconds (the server shell's clock).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The control plane's state and rules.
pub struct Service {
    pub store: Store,
    pub config: ControlConfig,
    pub hub: Hub,
    challenges: Challenges,
    /// When this instance started (Unix ms): silence is counted from here at the earliest,
    /// so a control plane that was down does not expire everyone the moment it is back.
    started_ms: i64,
    /// Membership changes run one at a time per instance; the UNIQUE constraints on
    /// addresses and names back this up in the database.
    writes: Mutex<()>,
    pub relays: crate::relays::Relays,
    /// Request counts and latencies for `/metrics`.
    pub requests: crate::metrics::RequestStats,
    quotas: Quotas,
}

/// Per-client quotas (`Limits`): who may ask how often.
struct Quotas {
    sign_in_ip: Limiter<IpAddr>,
    sign_in_device: Limiter<DeviceKey>,
    create_device: Limiter<DeviceKey>,
    create_ip: Limiter<IpAddr>,
    invite_party_ip: Limiter<(PartyId, IpAddr)>,
    invite_ip: Limiter<IpAddr>,
}

fn busy(wait: std::time::Duration, what: &str) -> ApiError {
    ApiError::too_many(
        "rate_limited",
        format!(
            "too many {what} from here; try again in {} s",
            wait.as_secs().max(1)
        ),
        wait,
    )
}

/// The one answer to a join with a wrong secret or for a party that does not exist, so
/// the answer does not tell whether a party id exists.
fn invite_refused() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "party_not_found",
        "no party accepts this invite: it has ended or the invite is wrong; ask the host for a \
         fresh invite",
    )
}

impl Service {
    pub fn new(store: Store, config: ControlConfig) -> Self {
        let l = config.limits;
        let quotas = Quotas {
            sign_in_ip: Limiter::new(l.sign_ins_per_ip),
            sign_in_device: Limiter::new(l.sign_ins_per_device),
            create_device: Limiter::new(l.parties_per_device),
            create_ip: Limiter::new(l.parties_per_ip),
            invite_party_ip: Limiter::new(l.invite_tries_per_party_ip),
            invite_ip: Limiter::new(l.invite_tries_per_ip),
        };
        Self {
            quotas,
            store,
            config,
            hub: Hub::default(),
            challenges: Challenges::default(),
            started_ms: now_ms(),
            writes: Mutex::new(()),
            relays: crate::relays::Relays::default(),
            requests: crate::metrics::RequestStats::default(),
        }
    }

    // ---------------------------------------------------------------- auth

    /// A challenge for `device`; `ip` asked (each address has a quota of sign-in requests).
    pub fn challenge(&self, device: DeviceKey, ip: IpAddr) -> Result<ChallengeResponse, ApiError> {
        self.quotas
            .sign_in_ip
            .take(&client_key(ip), Instant::now())
            .map_err(|w| busy(w, "sign-in requests"))?;
        Ok(self.challenges.issue(device))
    }

    pub async fn token(&self, req: TokenRequest, ip: IpAddr) -> Result<TokenResponse, ApiError> {
        let now = Instant::now();
        self.quotas
            .sign_in_ip
            .take(&client_key(ip), now)
            .map_err(|w| busy(w, "sign-in requests"))?;
        // Counted once the proof holds: only the key's holder can spend its device quota.
        self.quotas
            .sign_in_device
            .check(&req.public_key, now)
            .map_err(|w| busy(w, "sign-ins of this device"))?;
        self.challenges
            .verify(&req.challenge_id, &req.public_key, &req.proof)?;
        self.quotas.sign_in_device.spend(&req.public_key, now);
        let _w = self.writes.lock().await;
        let mut c = self.store.pool.acquire().await?;
        store::upsert_device(&mut c, &req.public_key, now_ms()).await?;
        self.issue_token(&mut c, &req.public_key).await
    }

    /// A new token for the holder of `old`, which stops working at once, so a token that
    /// leaked is not renewed twice.
    pub async fn renew(&self, device: &DeviceKey, old: &str) -> Result<TokenResponse, ApiError> {
        let _w = self.writes.lock().await;
        let mut tx = self.store.write().await?;
        store::delete_token(&mut tx, &auth::token_digest(old)).await?;
        let token = self.issue_token(&mut tx, device).await?;
        tx.commit().await?;
        Ok(token)
    }

    async fn issue_token(
        &self,
        c: &mut SqliteConnection,
        device: &DeviceKey,
    ) -> Result<TokenResponse, ApiError> {
        let (resp, digest) = auth::new_token();
        let ttl = i64::try_from(auth::TOKEN_TTL.as_millis()).unwrap_or(i64::MAX);
        store::insert_token(c, &digest, device, now_ms() + ttl).await?;
        Ok(resp)
    }

    pub async fn authenticate(&self, token: &str) -> Result<DeviceKey, ApiError> {
        let mut c = self.store.pool.acquire().await?;
        store::token_owner(&mut c, &auth::token_digest(token), now_ms())
            .await?
            .ok_or_else(|| ApiError::unauthorized("the token is unknown or expired; sign in again"))
    }

    // ---------------------------------------------------------------- parties

    pub async fn create(
        &self,
        device: DeviceKey,
        req: CreatePartyRequest,
        base_url: &str,
        ip: IpAddr,
    ) -> Result<PartyResponse, ApiError> {
        if let Some(allowed) = &self.config.creators
            && !allowed.contains(&device)
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_allowed",
                "this control plane only lets its owner create parties",
            ));
        }
        let name = clean_name(&req.name, 64, "party name")?;
        let player = clean_name(&req.player_name, 32, "player name")?;
        if let Some(m) = req.max_members
            && !(2..=MAX_PARTY_SIZE).contains(&m)
        {
            return Err(ApiError::bad_request(format!(
                "max_members must be between 2 and {MAX_PARTY_SIZE}"
            )));
        }
        // Counted once the request is valid: a typo costs nothing.
        let clock = Instant::now();
        let ip = client_key(ip);
        self.quotas
            .create_device
            .check(&device, clock)
            .and_then(|()| self.quotas.create_ip.check(&ip, clock))
            .map_err(|w| busy(w, "new parties"))?;
        self.quotas.create_device.spend(&device, clock);
        self.quotas.create_ip.spend(&ip, clock);
        let mut id = [0u8; 8];
        let mut secret = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        rand::rng().fill_bytes(&mut secret);
        let id = PartyId::from_bytes(id);
        // Every later log line of this request names the new party.
        tracing::Span::current().record("party", tracing::field::display(&id));
        let row = PartyRow {
            id,
            name,
            secret: PartySecret::from_bytes(secret).to_string(),
            host: device,
            locked: false,
            max_members: req.max_members,
            network: self.config.network.to_string(),
            version: 1,
        };
        // Before any write: a URL unfit for an invite must not leave a party behind.
        let invite = self.invite_code(&row, base_url)?;
        let _w = self.writes.lock().await;
        let now = now_ms();
        let mut tx = self.store.write().await?;
        store::insert_party(&mut tx, &row, now).await?;
        store::reserve(&mut tx, &row.id, &device, HOST_OFFSET).await?;
        store::insert_member(&mut tx, &row.id, &device, &player, now).await?;
        let view = self.view_in(&mut tx, &row.id).await?;
        tx.commit().await?;
        tracing::info!(party = %row.id, "party created");
        self.push(&view);
        Ok(PartyResponse {
            party: view,
            invite,
        })
    }

    pub async fn join(
        &self,
        device: DeviceKey,
        id: PartyId,
        req: JoinPartyRequest,
        base_url: &str,
        ip: IpAddr,
    ) -> Result<PartyResponse, ApiError> {
        let player = clean_name(&req.player_name, 32, "player name")?;
        let secret = req.secret.ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_secret",
                "joining needs the party's invite secret; use the whole invite code",
            )
        })?;
        // Refused tries are counted per party and address and per address; once either
        // is used up, every join from there waits, right secret or not, so guessing
        // learns nothing faster than the quota.
        let ip = client_key(ip);
        // Checked and spent under the write lock, which joins take one at a time: parallel
        // guesses cannot all pass the check before any of them spends.
        let _w = self.writes.lock().await;
        let clock = Instant::now();
        self.quotas
            .invite_party_ip
            .check(&(id, ip), clock)
            .and_then(|()| self.quotas.invite_ip.check(&ip, clock))
            .map_err(|w| busy(w, "refused invites"))?;
        let refused = || {
            self.quotas.invite_party_ip.spend(&(id, ip), clock);
            self.quotas.invite_ip.spend(&ip, clock);
            tracing::debug!(party = %id, "join refused: unknown party or wrong secret");
            invite_refused()
        };
        let now = now_ms();
        let mut tx = self.store.write().await?;
        let Some(party) = store::get_party(&mut tx, &id).await? else {
            return Err(refused());
        };
        let stored: PartySecret = party.secret.parse().map_err(ApiError::internal)?;
        if !stored.ct_eq(&secret) {
            return Err(refused());
        }
        if store::is_banned(&mut tx, &id, &device).await? {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "banned",
                "the host removed this device from the party",
            ));
        }
        // Before any write: a URL unfit for an invite must not leave a member behind.
        let invite = self.invite_code(&party, base_url)?;
        let members = store::members(&mut tx, &id).await?;
        if members.iter().any(|m| m.public_key == device) {
            // Already a member (a daemon restarting): same address, no change.
            store::touch_member(&mut tx, &id, &device, now).await?;
            let view = self.view_in(&mut tx, &id).await?;
            tx.commit().await?;
            return Ok(PartyResponse {
                party: view,
                invite,
            });
        }
        if party.locked {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "party_locked",
                "the party is locked; the host must unlock it before anyone can join",
            ));
        }
        let limit = party.max_members.unwrap_or(MAX_PARTY_SIZE);
        if members.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "party_full",
                format!("the party is full ({limit} members)"),
            ));
        }
        if store::reservation(&mut tx, &id, &device).await?.is_none() {
            let network: PartyNetwork = party.network.parse().map_err(ApiError::internal)?;
            let taken = store::reserved_offsets(&mut tx, &id).await?;
            let offset = network
                .lowest_free(FIRST_MEMBER_OFFSET, &taken)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        "party_full",
                        "the party network has no free address left",
                    )
                })?;
            store::reserve(&mut tx, &id, &device, offset).await?;
        }
        let name = unique_name(&player, members.iter().map(|m| m.name.as_str()));
        store::insert_member(&mut tx, &id, &device, &name, now).await?;
        store::update_party(&mut tx, &party).await?;
        let view = self.view_in(&mut tx, &id).await?;
        tx.commit().await?;
        tracing::info!(party = %id, members = view.members.len(), "member joined");
        self.push(&view);
        Ok(PartyResponse {
            party: view,
            invite,
        })
    }

    pub async fn leave(&self, device: DeviceKey, id: PartyId) -> Result<(), ApiError> {
        let _w = self.writes.lock().await;
        let mut tx = self.store.write().await?;
        self.member_party(&mut tx, &device, &id).await?;
        let view = self.remove_member(&mut tx, &id, &device).await?;
        tx.commit().await?;
        self.after_removal(view, &id, &device, "left the party")
            .await;
        Ok(())
    }

    pub async fn kick(
        &self,
        device: DeviceKey,
        id: PartyId,
        who: &str,
    ) -> Result<PartyView, ApiError> {
        let _w = self.writes.lock().await;
        let mut tx = self.store.write().await?;
        let party = self.member_party(&mut tx, &device, &id).await?;
        if party.host != device {
            return Err(ApiError::not_host("kick members"));
        }
        let members = store::members(&mut tx, &id).await?;
        let target = members
            .iter()
            .find(|m| m.name == who || m.public_key.to_string() == who)
            .map(|m| m.public_key)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "member_not_found",
                    format!("no member named {who:?} in this party"),
                )
            })?;
        if target == device {
            return Err(ApiError::bad_request(
                "the host cannot kick itself; leave the party instead",
            ));
        }
        store::ban(&mut tx, &id, &target).await?;
        let view = self.remove_member(&mut tx, &id, &target).await?;
        tx.commit().await?;
        self.after_removal(view.clone(), &id, &target, "kicked by the host")
            .await;
        view.ok_or_else(ApiError::party_not_found)
    }

    pub async fn lock(
        &self,
        device: DeviceKey,
        id: PartyId,
        locked: bool,
    ) -> Result<PartyView, ApiError> {
        let _w = self.writes.lock().await;
        let mut tx = self.store.write().await?;
        let mut party = self.member_party(&mut tx, &device, &id).await?;
        if party.host != device {
            return Err(ApiError::not_host(if locked {
                "lock the party"
            } else {
                "unlock the party"
            }));
        }
        if party.locked != locked {
            party.locked = locked;
            store::update_party(&mut tx, &party).await?;
        }
        let view = self.view_in(&mut tx, &id).await?;
        tx.commit().await?;
        self.push(&view);
        Ok(view)
    }

    pub async fn heartbeat(&self, device: DeviceKey, id: PartyId) -> Result<PartyView, ApiError> {
        let _w = self.writes.lock().await;
        let mut tx = self.store.write().await?;
        let party = self.member_party(&mut tx, &device, &id).await?;
        let was_away = store::members(&mut tx, &id)
            .await?
            .iter()
            .any(|m| m.public_key == device && m.away);
        store::touch_member(&mut tx, &id, &device, now_ms()).await?;
        if was_away {
            store::update_party(&mut tx, &party).await?;
        }
        let view = self.view_in(&mut tx, &id).await?;
        tx.commit().await?;
        if was_away {
            self.push(&view);
        }
        Ok(view)
    }

    pub async fn set_candidates(
        &self,
        device: DeviceKey,
        id: PartyId,
        candidates: CandidatesRequest,
    ) -> Result<PartyView, ApiError> {
        if candidates.candidates.len() > MAX_CANDIDATES {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_CANDIDATES} candidate addresses"
            )));
        }
        if candidates.games.len() > lanrage_proto::api::MAX_GAMES
            || !candidates
                .games
                .iter()
                .all(|g| lanrage_proto::api::valid_game_id(g))
        {
            return Err(ApiError::bad_request(format!(
                "games: at most {} game ids of a-z, 0-9 and _",
                lanrage_proto::api::MAX_GAMES
            )));
        }
        if candidates
            .relayed
            .iter()
            .any(|r| !candidates.candidates.contains(r))
        {
            return Err(ApiError::bad_request(
                "every relayed address must also be a candidate",
            ));
        }
        let json = serde_json::to_string(&candidates).map_err(ApiError::internal)?;
        let _w = self.writes.lock().await;
        let mut tx = self.store.write().await?;
        let party = self.member_party(&mut tx, &device, &id).await?;
        let current = store::members(&mut tx, &id).await?;
        let changed = current
            .iter()
            .any(|m| m.public_key == device && m.candidates != json);
        if changed {
            store::set_candidates(&mut tx, &id, &device, &json).await?;
            store::update_party(&mut tx, &party).await?;
        }
        let view = self.view_in(&mut tx, &id).await?;
        tx.commit().await?;
        if changed {
            self.push(&view);
        }
        Ok(view)
    }

    pub async fn view(&self, device: DeviceKey, id: PartyId) -> Result<PartyView, ApiError> {
        let mut c = self.store.pool.acquire().await?;
        self.member_party(&mut c, &device, &id).await?;
        self.view_in(&mut c, &id).await
    }

    pub async fn invite(
        &self,
        device: DeviceKey,
        id: PartyId,
        base_url: &str,
    ) -> Result<String, ApiError> {
        let mut c = self.store.pool.acquire().await?;
        let party = self.member_party(&mut c, &device, &id).await?;
        self.invite_code(&party, base_url)
    }

    /// Marks members silent for `away_after` as away and removes those silent for
    /// `remove_after`, pushing each change. Silence counts from this instance's start at the
    /// earliest. One write transaction: the sweep is all or nothing.
    pub async fn sweep(&self, now: i64) -> Result<(), ApiError> {
        let live = self.config.liveness;
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let up_for = now - self.started_ms;
        let _w = self.writes.lock().await;
        let mut tx = self.store.write().await?;
        store::purge_tokens(&mut tx, now).await?;
        let mut removals = Vec::new();
        if up_for > ms(live.remove_after) {
            for (party, device, _) in
                store::silent_members(&mut tx, now - ms(live.remove_after)).await?
            {
                let view = self.remove_member(&mut tx, &party, &device).await?;
                removals.push((view, party, device));
            }
        }
        let mut changed = Vec::new();
        if up_for > ms(live.away_after) {
            for (party, device, away) in
                store::silent_members(&mut tx, now - ms(live.away_after)).await?
            {
                if away {
                    continue;
                }
                let Some(row) = store::get_party(&mut tx, &party).await? else {
                    continue;
                };
                store::set_away(&mut tx, &party, &device).await?;
                store::update_party(&mut tx, &row).await?;
                if !changed.contains(&party) {
                    changed.push(party);
                }
            }
        }
        let mut views = Vec::new();
        for party in &changed {
            views.push(self.view_in(&mut tx, party).await?);
        }
        tx.commit().await?;
        for (view, party, device) in removals {
            tracing::info!(%party, "member removed after five silent minutes");
            self.after_removal(view, &party, &device, "silent for too long")
                .await;
        }
        for view in &views {
            self.push(view);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- relays

    /// STUN and TURN servers for `device`, with credentials for the party it joined last
    /// (a device in several parties relays for the newest); only members get any.
    pub async fn ice(
        &self,
        device: &DeviceKey,
        unix: u64,
    ) -> Result<lanrage_proto::api::IceServers, ApiError> {
        let mut c = self.store.pool.acquire().await?;
        let party = store::latest_party_of(&mut c, device)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "not_a_member",
                    "relay servers are only for members of a party; create or join one first",
                )
            })?;
        Ok(self
            .relays
            .ice_for(&self.config.ice, device, &party, Instant::now(), unix))
    }

    // ---------------------------------------------------------------- live

    /// A WebSocket opened: send the device the current view of each of its parties.
    pub async fn connected(&self, device: &DeviceKey) -> Result<(), ApiError> {
        let mut c = self.store.pool.acquire().await?;
        for id in store::parties_of(&mut c, device).await? {
            let party = self.view_in(&mut c, &id).await?;
            self.hub.send(device, &ServerMessage::Party { party });
        }
        Ok(())
    }

    /// Relays a signalling message to a member of a party the sender is in.
    pub async fn signal(
        &self,
        from: DeviceKey,
        to: DeviceKey,
        payload: serde_json::Value,
    ) -> Result<(), ApiError> {
        let mut c = self.store.pool.acquire().await?;
        let mine = store::parties_of(&mut c, &from).await?;
        let theirs = store::parties_of(&mut c, &to).await?;
        if !mine.iter().any(|p| theirs.contains(p)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_member",
                "signals go only to members of a party you are in",
            ));
        }
        self.hub.send(&to, &ServerMessage::Signal { from, payload });
        Ok(())
    }

    // ---------------------------------------------------------------- helpers

    /// The party, if `device` is a member; otherwise the right error.
    async fn member_party(
        &self,
        c: &mut SqliteConnection,
        device: &DeviceKey,
        id: &PartyId,
    ) -> Result<PartyRow, ApiError> {
        let party = store::get_party(c, id)
            .await?
            .ok_or_else(ApiError::party_not_found)?;
        if store::members(c, id)
            .await?
            .iter()
            .any(|m| m.public_key == *device)
        {
            Ok(party)
        } else {
            Err(ApiError::not_member())
        }
    }

    /// Removes a member; hands the party to the longest-standing member if the host left;
    /// ends the party when nobody is left. Returns the new view, or `None` if it ended.
    async fn remove_member(
        &self,
        c: &mut SqliteConnection,
        id: &PartyId,
        device: &DeviceKey,
    ) -> Result<Option<PartyView>, ApiError> {
        let Some(mut party) = store::get_party(c, id).await? else {
            return Ok(None);
        };
        store::delete_member(c, id, device).await?;
        let rest = store::members(c, id).await?;
        let Some(successor) = rest
            .iter()
            .min_by_key(|m| (m.joined_at, m.public_key))
            .map(|m| m.public_key)
        else {
            store::delete_party(c, id).await?;
            tracing::info!(party = %id, "party ended: no members left");
            return Ok(None);
        };
        if party.host == *device {
            party.host = successor;
            tracing::info!(party = %id, "host left; party handed to the longest-standing member");
        }
        store::update_party(c, &party).await?;
        Ok(Some(self.view_in(c, id).await?))
    }

    async fn after_removal(
        &self,
        view: Option<PartyView>,
        id: &PartyId,
        device: &DeviceKey,
        reason: &str,
    ) {
        // Its relay credentials were for this membership; relays drop its allocations.
        let unix = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let revocation = self
            .relays
            .revoke(device, id, unix, self.config.ice.credential_ttl);
        // Kept in the database too, so relays hear of it after a restart of this server.
        if let Err(e) = self.remember(&revocation, unix).await {
            tracing::warn!(error = %e, "revocation not saved; relays learn of it until this server restarts");
        }
        self.hub.send(
            device,
            &ServerMessage::Removed {
                party: *id,
                reason: reason.to_owned(),
            },
        );
        if let Some(view) = view {
            self.push(&view);
        }
    }

    async fn remember(&self, r: &lanrage_proto::api::Revocation, unix: u64) -> sqlx::Result<()> {
        let mut tx = self.store.write().await?;
        let (until, now) = (
            i64::try_from(r.until).unwrap_or(i64::MAX),
            i64::try_from(unix).unwrap_or(i64::MAX),
        );
        store::put_revocation(&mut tx, &r.user, until, now).await?;
        tx.commit().await
    }

    /// Takes back the revocations still in force from the database (at start).
    pub async fn restore_revocations(&self) -> sqlx::Result<()> {
        let now = now_ms() / 1000;
        let mut c = self.store.pool.acquire().await?;
        let saved = store::revocations(&mut c, now).await?;
        self.relays.restore(saved.into_iter().map(|(user, until)| {
            lanrage_proto::api::Revocation {
                user,
                until: u64::try_from(until).unwrap_or(0),
            }
        }));
        Ok(())
    }

    async fn view_in(&self, c: &mut SqliteConnection, id: &PartyId) -> Result<PartyView, ApiError> {
        let party = store::get_party(c, id)
            .await?
            .ok_or_else(ApiError::party_not_found)?;
        let network: PartyNetwork = party.network.parse().map_err(ApiError::internal)?;
        let members = store::members(c, id)
            .await?
            .into_iter()
            .map(|m| {
                let c = stored_candidates(&m.candidates);
                MemberView {
                    public_key: m.public_key,
                    name: m.name,
                    virtual_ip: network.addr(m.host_offset),
                    joined_at: m.joined_at,
                    online: !m.away,
                    candidates: c.candidates,
                    relayed: c.relayed,
                    nat: c.nat,
                    games: c.games,
                }
            })
            .collect();
        Ok(PartyView {
            id: party.id,
            name: party.name,
            version: u64::try_from(party.version).unwrap_or(0),
            host: party.host,
            locked: party.locked,
            max_members: party.max_members,
            network: party.network,
            members,
        })
    }

    fn push(&self, view: &PartyView) {
        let msg = ServerMessage::Party {
            party: view.clone(),
        };
        for m in &view.members {
            self.hub.send(&m.public_key, &msg);
        }
    }

    fn invite_code(&self, party: &PartyRow, base_url: &str) -> Result<String, ApiError> {
        let url = self.config.public_url.as_deref().unwrap_or(base_url);
        let secret: PartySecret = party.secret.parse().map_err(ApiError::internal)?;
        InviteCode::new(url, party.id, secret)
            .map(|c| c.to_string())
            .map_err(|e| ApiError::bad_request(format!("cannot build an invite for {url:?}: {e}")))
    }
}

/// Trims a name and checks its length and characters.
fn clean_name(raw: &str, max: usize, what: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    let len = name.chars().count();
    if len == 0 || len > max {
        return Err(ApiError::bad_request(format!(
            "the {what} must be 1 to {max} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "the {what} must not contain control characters"
        )));
    }
    Ok(name.to_owned())
}

/// `name`, or `name-2`, `name-3`… if another member already has it.
fn unique_name<'a>(name: &str, taken: impl Iterator<Item = &'a str> + Clone) -> String {
    if !taken.clone().any(|t| t == name) {
        return name.to_owned();
    }
    (2..)
        .map(|i| format!("{name}-{i}"))
        .find(|c| !taken.clone().any(|t| t == c))
        .unwrap_or_else(|| name.to_owned())
}

/// A member's stored candidates: a `CandidatesRequest` as JSON, or (rows written before
/// relayed candidates existed) a bare address list.
fn stored_candidates(json: &str) -> CandidatesRequest {
    serde_json::from_str(json).unwrap_or_else(|_| CandidatesRequest {
        candidates: serde_json::from_str(json).unwrap_or_default(),
        relayed: Vec::new(),
        nat: None,
        games: Vec::new(),
    })
}

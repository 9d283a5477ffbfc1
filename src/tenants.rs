//! Tenants: one sandbox per partner or prospect, with its credentials, plan,
//! enabled APIs and expiry. Kept in the [`Store`](crate::store::Store);
//! secrets are shown once at provisioning and stored only as SHA-256 hashes
//! (they are 256-bit random values, so a fast hash is enough).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::store::{SharedStore, StoreError, keys};

/// The record of one tenant, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Tenant {
    /// The sandbox id, `sbx_…`.
    pub id: String,
    /// The prospect's or partner's company.
    pub prospect_company: String,
    /// The contact's email.
    pub prospect_email: String,
    /// The CRM deal this sandbox belongs to.
    pub deal_id: Option<String>,
    /// Industry, for analytics.
    pub industry: Option<String>,
    /// Persona, for analytics.
    pub persona: Option<String>,
    /// The plan (limits arrive with the limits issue).
    pub plan: String,
    /// APIs the tenant may call; `None` means all.
    pub features_enabled: Option<Vec<String>>,
    /// Seed profile for sample data (the writes issue loads it).
    pub sample_data_persona: Option<String>,
    /// mTLS identities mapped to this tenant.
    pub mtls_identities: Vec<String>,
    /// OAuth client id.
    pub client_id: String,
    /// SHA-256 (hex) of the client secret.
    pub client_secret_sha256: String,
    /// SHA-256 (hex) of the API key.
    pub api_key_sha256: String,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Expiry time, Unix seconds.
    pub expires_at: u64,
    /// Set when the sandbox was deactivated (Unix seconds).
    pub deactivated_at: Option<u64>,
    /// Set by the expiry sweep once it has seen the sandbox expired (Unix
    /// seconds); cleared by an extension.
    #[serde(default)]
    pub expired_at: Option<u64>,
}

/// A tenant's status at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Usable.
    Active,
    /// Past `expires_at`.
    Expired,
    /// Deactivated by the operators.
    Deactivated,
}

impl Tenant {
    /// The status at `now` (Unix seconds).
    pub fn status(&self, now: u64) -> Status {
        if self.deactivated_at.is_some() {
            Status::Deactivated
        } else if now >= self.expires_at {
            Status::Expired
        } else {
            Status::Active
        }
    }
}

/// The secrets of a new tenant, shown once.
#[derive(Debug, Serialize)]
pub struct Credentials {
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: String,
    /// Sandbox API key.
    pub api_key: String,
}

/// Unix time in seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One day.
pub const DAY: u64 = 86_400;

/// 32 random bytes as hex.
fn random_hex(rng: &SystemRandom) -> Result<String, StoreError> {
    let mut b = [0u8; 32];
    rng.fill(&mut b)
        .map_err(|_| StoreError::Unavailable("no system randomness".into()))?;
    Ok(hex(&b))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// SHA-256 of a secret, hex.
pub fn sha256_hex(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

fn tenant_key(id: &str) -> String {
    format!("g/tenants/{id}")
}
fn api_key_index(hash: &str) -> String {
    format!("g/apikeys/{hash}")
}
fn mtls_index(identity: &str) -> String {
    format!("g/mtls/{identity}")
}
fn client_index(client_id: &str) -> String {
    format!("g/clients/{client_id}")
}
fn archive_key(id: &str) -> String {
    format!("g/archive/{id}")
}

/// Fresh credentials and their hashes for a new tenant.
pub fn new_credentials(api_key_prefix: &str) -> Result<(Credentials, String, String), StoreError> {
    let rng = SystemRandom::new();
    let creds = Credentials {
        client_id: format!("cli_{}", ulid::Ulid::new().to_string().to_ascii_lowercase()),
        client_secret: random_hex(&rng)?,
        api_key: format!("{api_key_prefix}{}", random_hex(&rng)?),
    };
    let secret_hash = sha256_hex(&creds.client_secret);
    let key_hash = sha256_hex(&creds.api_key);
    Ok((creds, secret_hash, key_hash))
}

/// A new active tenant for `company`/`email`, created at `now` and expiring
/// `life` later, with fresh credentials (API keys start with
/// `api_key_prefix`). Every optional field is empty and the plan is `trial`;
/// callers set what they need before storing it with [`Registry::put`].
pub fn new_tenant(
    company: &str,
    email: &str,
    now: u64,
    life: Duration,
    api_key_prefix: &str,
) -> Result<(Tenant, Credentials), StoreError> {
    let (creds, secret_hash, key_hash) = new_credentials(api_key_prefix)?;
    let tenant = Tenant {
        id: new_id(),
        prospect_company: company.to_owned(),
        prospect_email: email.to_owned(),
        deal_id: None,
        industry: None,
        persona: None,
        plan: "trial".into(),
        features_enabled: None,
        sample_data_persona: None,
        mtls_identities: Vec::new(),
        client_id: creds.client_id.clone(),
        client_secret_sha256: secret_hash,
        api_key_sha256: key_hash,
        created_at: now,
        expires_at: now.saturating_add(life.as_secs()),
        deactivated_at: None,
        expired_at: None,
    };
    Ok((tenant, creds))
}

/// A new sandbox id.
pub fn new_id() -> String {
    format!("sbx_{}", ulid::Ulid::new().to_string().to_ascii_lowercase())
}

/// How long a resolved API key is served from memory. Deactivation through
/// this registry takes effect at once (the entry is dropped); a change made
/// by another replica is seen within this time.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// Source of [`Registry::id`]s.
static REGISTRY_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Tenants in a store, with a bounded cache of resolved API keys so the
/// identify stage does not read and decode a record on every request.
#[derive(Clone)]
pub struct Registry {
    store: SharedStore,
    /// The same store, as background workers use it.
    background: SharedStore,
    by_key: moka::sync::Cache<String, std::sync::Arc<Tenant>>,
    by_id: moka::sync::Cache<String, std::sync::Arc<Tenant>>,
    /// Tells this registry apart from others in the same process.
    id: u64,
    /// Bumped by every change made through this registry, so per-worker
    /// caches (see `pipeline::identify`) can drop what they hold at once.
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Every tenant's quota counters.
    quotas: std::sync::Arc<crate::limits::quota::Counters>,
    /// Every tenant's requests in flight.
    in_flight: std::sync::Arc<crate::limits::concurrency::InFlight>,
    /// Concurrent cluster limit decisions, coalesced into batches.
    limit_batches: std::sync::Arc<crate::limits::cluster::Coalescer>,
    /// The queue of finished decision traces to the background writer.
    traces: crate::trace::Sink,
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl Registry {
    /// The tenants kept in `store`.
    pub fn new(store: SharedStore) -> Self {
        // Quota counters and in-flight counts share each tenant's state.
        let states = std::sync::Arc::<crate::limits::TenantStates>::default();
        Self {
            quotas: std::sync::Arc::new(crate::limits::quota::Counters::on(
                store.clone(),
                std::sync::Arc::clone(&states),
            )),
            in_flight: std::sync::Arc::new(crate::limits::concurrency::InFlight::on(states)),
            limit_batches: std::sync::Arc::default(),
            traces: crate::trace::Sink::new(),
            background: store.for_background().unwrap_or_else(|| store.clone()),
            store,
            by_key: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(CACHE_TTL)
                .build(),
            by_id: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(CACHE_TTL)
                .build(),
            id: REGISTRY_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            generation: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    /// This registry's process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Changes made through this registry so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The underlying store.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The store as background workers use it ([`crate::store::Store::for_background`]).
    pub fn background_store(&self) -> &SharedStore {
        &self.background
    }

    /// The tenants' quota counters.
    pub fn quotas(&self) -> &crate::limits::quota::Counters {
        &self.quotas
    }

    /// The tenants' requests in flight.
    pub fn in_flight(&self) -> &std::sync::Arc<crate::limits::concurrency::InFlight> {
        &self.in_flight
    }

    /// The coalescer of cluster limit decisions (with the Redis store).
    pub fn limit_batches(&self) -> &std::sync::Arc<crate::limits::cluster::Coalescer> {
        &self.limit_batches
    }

    /// The queue of finished decision traces (`crate::trace`).
    pub fn traces(&self) -> &crate::trace::Sink {
        &self.traces
    }

    /// Saves a tenant (new or changed) and its API-key index entry.
    pub async fn put(&self, t: &Tenant) -> Result<(), StoreError> {
        let json = serde_json::to_vec(t).map_err(corrupt)?;
        self.store.put(&tenant_key(&t.id), json, None).await?;
        self.store
            .put(
                &api_key_index(&t.api_key_sha256),
                t.id.clone().into_bytes(),
                None,
            )
            .await?;
        self.store
            .put(&client_index(&t.client_id), t.id.clone().into_bytes(), None)
            .await?;
        if t.deactivated_at.is_none() {
            for identity in &t.mtls_identities {
                self.store
                    .put(&mtls_index(identity), t.id.clone().into_bytes(), None)
                    .await?;
            }
        }
        // After the writes, so a concurrent lookup cannot re-cache the old record.
        self.by_key.invalidate(&t.api_key_sha256);
        self.by_id.invalidate(&t.id);
        self.changed();
        Ok(())
    }

    /// The tenant `id`.
    pub async fn get(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        match self.store.get(&tenant_key(id)).await? {
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(corrupt),
            None => Ok(None),
        }
    }

    /// The tenant `id`, served from memory for a few seconds (the identify
    /// stage's path; admin reads use [`Registry::get`]).
    pub async fn by_id(&self, id: &str) -> Result<Option<std::sync::Arc<Tenant>>, StoreError> {
        if let Some(t) = self.by_id.get(id) {
            return Ok(Some(t));
        }
        let Some(t) = self.get(id).await? else {
            return Ok(None);
        };
        let t = std::sync::Arc::new(t);
        self.by_id.insert(id.to_owned(), t.clone());
        Ok(Some(t))
    }

    /// The tenant owning an API key, by the key's hash.
    pub async fn by_api_key_hash(
        &self,
        hash: &str,
    ) -> Result<Option<std::sync::Arc<Tenant>>, StoreError> {
        if let Some(t) = self.by_key.get(hash) {
            return Ok(Some(t));
        }
        let Some(id) = self.store.get(&api_key_index(hash)).await? else {
            return Ok(None);
        };
        let Some(t) = self.get(&String::from_utf8_lossy(&id)).await? else {
            return Ok(None);
        };
        let t = std::sync::Arc::new(t);
        self.by_key.insert(hash.to_owned(), t.clone());
        Ok(Some(t))
    }

    /// The tenant an OAuth client belongs to (any status: the caller decides).
    pub async fn by_client_id(&self, client_id: &str) -> Result<Option<Tenant>, StoreError> {
        match self.store.get(&client_index(client_id)).await? {
            Some(id) => self.get(&String::from_utf8_lossy(&id)).await,
            None => Ok(None),
        }
    }

    /// The active tenant an mTLS identity is registered to.
    pub async fn by_mtls_identity(&self, identity: &str) -> Result<Option<Tenant>, StoreError> {
        match self.store.get(&mtls_index(identity)).await? {
            Some(id) => Ok(self
                .get(&String::from_utf8_lossy(&id))
                .await?
                .filter(|t| t.deactivated_at.is_none())),
            None => Ok(None),
        }
    }

    /// Every tenant, oldest first.
    pub async fn list(&self) -> Result<Vec<Tenant>, StoreError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.scan("g/tenants/", after.as_deref(), 500).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (_, v) in &page {
                out.push(serde_json::from_slice::<Tenant>(v).map_err(corrupt)?);
            }
        }
        out.sort_by_key(|t| t.created_at);
        Ok(out)
    }

    /// Deactivates a tenant: its credentials stop working at once, its
    /// record and data are archived as JSON, and its data is freed.
    pub async fn deactivate(&self, mut t: Tenant, now: u64) -> Result<Tenant, StoreError> {
        t.deactivated_at = Some(now);
        let data = self
            .store
            .scan(&keys::tenant(&t.id), None, usize::MAX)
            .await?;
        let archive = serde_json::json!({
            "tenant": &t,
            "archived_at": now,
            "data": data.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect::<std::collections::BTreeMap<_, _>>(),
        });
        self.store
            .put(
                &archive_key(&t.id),
                serde_json::to_vec(&archive).map_err(corrupt)?,
                None,
            )
            .await?;
        self.store.delete(&api_key_index(&t.api_key_sha256)).await?;
        self.store.delete(&client_index(&t.client_id)).await?;
        for identity in &t.mtls_identities {
            self.store.delete(&mtls_index(identity)).await?;
        }
        self.store.delete_prefix(&keys::tenant(&t.id)).await?;
        let json = serde_json::to_vec(&t).map_err(corrupt)?;
        self.store.put(&tenant_key(&t.id), json, None).await?;
        self.by_key.invalidate(&t.api_key_sha256);
        self.by_id.invalidate(&t.id);
        self.changed();
        Ok(t)
    }

    /// The archive of a deactivated tenant.
    pub async fn archive(&self, id: &str) -> Result<Option<serde_json::Value>, StoreError> {
        match self.store.get(&archive_key(id)).await? {
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(corrupt),
            None => Ok(None),
        }
    }

    /// Marks the tenants that have expired since the last sweep; returns
    /// their ids. Their credentials already stop working at `expires_at`
    /// (the admit stage checks it on every request); the mark records when
    /// it was noticed, for the status API and the logs.
    pub async fn sweep_expired(&self, now: u64) -> Result<Vec<String>, StoreError> {
        let mut swept = Vec::new();
        for mut t in self.list().await? {
            if t.status(now) == Status::Expired && t.expired_at.is_none() {
                t.expired_at = Some(now);
                self.put(&t).await?;
                swept.push(t.id);
            }
        }
        Ok(swept)
    }

    /// Wipes a tenant's sandbox data: its state, idempotency records and
    /// test clock ([`keys::RESETTABLE`]); returns how many entries were
    /// removed. Its credentials and its quota and rate counters remain, so
    /// a reset never gives a tenant a fresh allowance.
    pub async fn reset(&self, id: &str) -> Result<u64, StoreError> {
        let mut removed = 0;
        for rest in keys::RESETTABLE {
            let key = keys::tenant_key(id, rest);
            removed += if rest.ends_with('/') {
                self.store.delete_prefix(&key).await?
            } else {
                u64::from(self.store.delete(&key).await?)
            };
        }
        // This process's cached clock goes with it (other replicas' caches
        // expire within a second).
        crate::clock::invalidate(self, id);
        Ok(removed)
    }
}

/// Days, as a `Duration`.
pub fn days(n: u64) -> Duration {
    Duration::from_secs(n * DAY)
}

//! The analytics worker: turns observations into the taxonomy's events,
//! keeps the engagement counters and raises alerts.
//!
//! The store is the source of truth, so replicas sharing Redis agree: every
//! "once" fact (first login, session N, a feature's first use in a session
//! and ever, a milestone, an alert, expiry) is claimed with
//! `put_if_absent` under `t/<tenant>/analytics/`, and counters are `incr`s.
//! The worker is one task, so its per-tenant cache is a plain map it owns
//! (no locks); the common request (same session, features already seen)
//! costs no store round trip. The session record (number, start, last
//! activity, workflow progress) is written when it changes and at most once
//! a minute of tenant time otherwise. Workflow progress is per replica
//! between those writes; a workflow whose steps are spread over replicas
//! within a minute may be missed (never counted twice).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::alerts::{self, Alerter, Condition};
use super::engagement::{self, counter};
use super::events::{self, Event, props};
use super::settings::{MilestoneKind, Settings};
use super::sinks::Dispatcher;
use super::{Msg, Observation};
use crate::store::{SharedStore, StoreError, keys};
use crate::tenants::{Registry, Tenant};

/// Refusals that are rate limits, not errors.
const RATE_LIMIT_CODES: [&str; 3] = ["rate_limited", "quota_exhausted", "too_many_in_flight"];

/// How long per-session keys live (longer than any sandbox).
const SESSION_TTL: Duration = Duration::from_secs(40 * 86_400);

/// Most tenants the worker keeps in memory; past it, the map starts over.
const CACHE_MAX: usize = 100_000;

/// How often (tenant seconds) an unchanged session record is written.
const WRITE_EVERY: u64 = 60;

/// The stored session record (`t/<tenant>/analytics/session`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SessionRecord {
    /// Sessions started so far (0: none).
    number: u64,
    /// Start of the current session (tenant seconds).
    started: u64,
    /// Last activity (tenant seconds).
    last: u64,
    /// Workflow progress in the current session: name → (steps done, first step's time).
    #[serde(default)]
    progress: BTreeMap<String, (usize, u64)>,
}

/// What the worker remembers of a tenant.
#[derive(Default)]
struct TenantState {
    rec: SessionRecord,
    /// Tenant time the record was last written.
    written: u64,
    /// Operations already seen in the current session.
    features: HashSet<Arc<str>>,
    /// The first login is known to be recorded.
    first_login: bool,
    /// Milestones known to be achieved (by index).
    milestones: HashSet<usize>,
}

fn akey(tenant: &str, rest: &str) -> String {
    keys::tenant_key(tenant, &format!("{}{rest}", keys::ANALYTICS))
}

struct Tracker {
    registry: Registry,
    sinks: Dispatcher,
    alerter: Alerter,
    tenants: std::collections::HashMap<String, TenantState, foldhash::fast::RandomState>,
}

/// Runs the worker until its queue closes (or the caller drops it at
/// shutdown), then hands back the sinks; the stall sweep runs every
/// `alerts.check_interval`.
pub(super) async fn run(
    mut rx: mpsc::Receiver<Msg>,
    settings: Arc<ArcSwap<Settings>>,
    registry: Registry,
    sinks: Dispatcher,
    alerter: Alerter,
) -> Dispatcher {
    let mut t = Tracker {
        registry,
        sinks,
        alerter,
        tenants: std::collections::HashMap::default(),
    };
    let mut tick = tokio::time::interval(settings.load().alerts.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Busy: drain what is queued, then sleep for POLL without a waker
        // registered, so the request path's `try_send` wakes nobody (a wake
        // per request is a futex call and a context switch on the workers'
        // cores). Idle: wait for the next message with a waker, which
        // costs one wake per message only while traffic is light.
        let mut drained = 0usize;
        loop {
            match rx.try_recv() {
                Ok(msg) => {
                    t.observe(&settings, msg).await;
                    drained += 1;
                    // A long backlog does not hold the runtime's other tasks up.
                    if drained.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return t.sinks,
            }
        }
        if drained > 0 {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                _ = tick.tick() => t.sweep_now(&settings).await,
            }
            continue;
        }
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return t.sinks };
                t.observe(&settings, msg).await;
            }
            _ = tick.tick() => t.sweep_now(&settings).await,
        }
    }
}

/// How long the busy worker sleeps between drains of its queue.
const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// `x` rounded to two decimals.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Tracker {
    async fn observe(&mut self, settings: &ArcSwap<Settings>, msg: Msg) {
        let s = settings.load_full();
        if let Err(e) = self.handle(&s, msg).await {
            metrics::counter!("sandgate_analytics_store_errors_total").increment(1);
            tracing::warn!(error = %e, "analytics: store failed; this observation is skipped");
        }
    }

    async fn sweep_now(&mut self, settings: &ArcSwap<Settings>) {
        let s = settings.load_full();
        if let Err(e) = self.sweep(&s).await {
            metrics::counter!("sandgate_analytics_store_errors_total").increment(1);
            tracing::warn!(error = %e, "analytics: stall sweep failed; retrying at the next interval");
        }
    }

    fn store(&self) -> &SharedStore {
        // Never the request path's handle: a failing worker must not make
        // the store count as down for requests.
        self.registry.background_store()
    }

    async fn once(
        &self,
        tenant: &str,
        rest: &str,
        now: u64,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        self.store()
            .put_if_absent(&akey(tenant, rest), now.to_string().into_bytes(), ttl)
            .await
    }

    async fn count(&self, tenant: &str, name: &str) -> Result<i64, StoreError> {
        self.store()
            .incr(&engagement::key(tenant, name), 1, None)
            .await
    }

    fn event(&self, t: &Tenant, name: &'static str, p: serde_json::Map<String, Value>) -> Event {
        Event::new(name, &t.id, t.deal_id.as_deref(), p)
    }

    /// Fires `condition` for `t` unless it already fired (any replica).
    async fn alert(
        &self,
        t: &Tenant,
        condition: Condition,
        what: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        if self
            .once(&t.id, &format!("alerts/{}", condition.as_str()), now, None)
            .await?
        {
            let who = alerts::Subject {
                sandbox_id: &t.id,
                company: &t.prospect_company,
                deal_id: t.deal_id.as_deref(),
            };
            self.alerter
                .send(condition, alerts::text(condition, &who, what));
        }
        Ok(())
    }

    /// The tenant's state (and its key in the cache, to put it back
    /// without allocating): cached, or read from the store.
    async fn state(&mut self, tenant: &str) -> Result<(String, TenantState), StoreError> {
        if let Some(kept) = self.tenants.remove_entry(tenant) {
            return Ok(kept);
        }
        let rec = match self.store().get(&akey(tenant, "session")).await? {
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("analytics session of {tenant}: {e}")))?,
            None => SessionRecord::default(),
        };
        Ok((
            tenant.to_owned(),
            TenantState {
                written: rec.last,
                rec,
                ..Default::default()
            },
        ))
    }

    fn keep(&mut self, (tenant, state): (String, TenantState)) {
        if self.tenants.len() >= CACHE_MAX {
            self.tenants.clear();
        }
        self.tenants.insert(tenant, state);
    }

    async fn handle(&mut self, s: &Settings, msg: Msg) -> Result<(), StoreError> {
        match msg {
            Msg::Request(obs) => {
                // Still there (a deleted sandbox's late requests write nothing).
                let Some(t) = self.registry.by_id(&obs.tenant.id).await? else {
                    return Ok(());
                };
                let mut st = self.state(&t.id).await?;
                let r = self.request(s, &t, &mut st.1, &obs).await;
                // Kept even after a store error: what was claimed stays claimed.
                self.keep(st);
                r
            }
            Msg::Help {
                tenant,
                help_type,
                context,
            } => {
                let Some(t) = self.registry.by_id(&tenant).await? else {
                    return Ok(());
                };
                let now = crate::clock::tenant_now(&self.registry, &t.id).await?.now;
                self.count(&t.id, counter::HELP).await?;
                let e = self.event(
                    &t,
                    events::HELP_REQUESTED,
                    props([
                        ("help_type", json!(help_type)),
                        ("context_feature", json!(context)),
                    ]),
                );
                let mut st = self.state(&t.id).await?;
                let r = self.finish(s, &t, &mut st.1, vec![e], None, &[], now).await;
                self.keep(st);
                r
            }
            Msg::Provisioned {
                tenant,
                deal_id,
                industry,
                persona,
                sample_data_records,
            } => {
                self.sinks.emit(Event::new(
                    events::PROVISIONED,
                    &tenant,
                    deal_id.as_deref(),
                    props([
                        ("deal_id", json!(deal_id)),
                        ("industry", json!(industry)),
                        ("persona", json!(persona)),
                        ("sample_data_records", json!(sample_data_records)),
                    ]),
                ));
                Ok(())
            }
            Msg::Expired { tenant } => {
                let Some(t) = self.registry.get(&tenant).await? else {
                    return Ok(());
                };
                if self
                    .once(&t.id, "expired", crate::tenants::now_secs(), None)
                    .await?
                {
                    let c = engagement::counts(self.store(), &t.id).await?;
                    let e = self.event(
                        &t,
                        events::EXPIRED,
                        props([
                            ("total_sessions", json!(c.sessions)),
                            ("total_features_used", json!(c.features)),
                            ("milestones_completed", json!(c.milestones)),
                        ]),
                    );
                    self.sinks.emit(e);
                }
                Ok(())
            }
        }
    }

    /// One request of tenant `t`.
    async fn request(
        &mut self,
        s: &Settings,
        t: &Tenant,
        st: &mut TenantState,
        obs: &Observation,
    ) -> Result<(), StoreError> {
        let now = match obs.now {
            Some(n) => n,
            None => crate::clock::tenant_now(&self.registry, &t.id).await?.now,
        };
        let mut out = Vec::new();
        let mut dirty = false;
        // Operation indices refer to the configuration that served the request.
        let op = if obs.sandbox == s.sandbox {
            s.op(obs.api, obs.op)
        } else {
            None
        };

        // sandbox_first_login: the first authenticated request, ever.
        if !st.first_login {
            if self.once(&t.id, "first_login", now, None).await? {
                let since = now.saturating_sub(t.created_at);
                out.push(self.event(
                    t,
                    events::FIRST_LOGIN,
                    props([
                        (
                            "hours_since_provisioned",
                            json!(round2(since as f64 / 3600.0)),
                        ),
                        ("login_method", json!(obs.via.map(|v| v.as_str()))),
                    ]),
                ));
                if since <= crate::tenants::DAY {
                    self.count(&t.id, counter::FIRST_LOGIN_24H).await?;
                }
            }
            st.first_login = true;
        }

        // sandbox_session_started: the first request, and the first after
        // `session_idle` of the tenant's time.
        if st.rec.number == 0 || now.saturating_sub(st.rec.last) >= s.session_idle {
            let n = st.rec.number + 1;
            if self
                .once(
                    &t.id,
                    &format!("sessions/{n}/started"),
                    now,
                    Some(SESSION_TTL),
                )
                .await?
            {
                out.push(self.event(
                    t,
                    events::SESSION_STARTED,
                    props([
                        ("session_number", json!(n)),
                        (
                            "days_since_provisioned",
                            json!(now.saturating_sub(t.created_at) / crate::tenants::DAY),
                        ),
                    ]),
                ));
                self.count(&t.id, counter::SESSIONS).await?;
            }
            st.rec = SessionRecord {
                number: n,
                started: now,
                last: now,
                progress: BTreeMap::new(),
            };
            st.features.clear();
            dirty = true;
        }
        st.rec.last = now;
        let session = st.rec.number;

        let served = obs.code.is_none();
        // Workflows and milestones count real work: a dry run is a use of
        // the feature, not a step.
        let success = served && !obs.dry_run && (200..300).contains(&obs.status);

        // sandbox_feature_used: the first use of an operation in a session.
        if let Some((_, o)) = op.filter(|_| served)
            && !st.features.contains(&o.id)
        {
            st.features.insert(o.id.clone());
            if self
                .once(
                    &t.id,
                    &format!("sessions/{session}/features/{}", o.id),
                    now,
                    Some(SESSION_TTL),
                )
                .await?
            {
                out.push(self.event(
                    t,
                    events::FEATURE_USED,
                    props([
                        ("feature_name", json!(&*o.id)),
                        ("feature_category", json!(o.tag.as_deref())),
                        ("is_differentiator", json!(o.differentiator)),
                    ]),
                ));
            }
            if self
                .once(&t.id, &format!("features/{}", o.id), now, None)
                .await?
            {
                self.count(&t.id, counter::FEATURES).await?;
                if o.differentiator {
                    self.count(&t.id, counter::DIFFERENTIATORS).await?;
                }
            }
        }

        // sandbox_workflow_completed: ordered steps, successful requests,
        // one session.
        let mut completed: Vec<Arc<str>> = Vec::new();
        if let Some((a, o)) = op.filter(|_| success) {
            for w in &s.workflows {
                let (done, started) = st.rec.progress.get(&*w.name).copied().unwrap_or((0, now));
                let (done, started) = if w.is_step(done, &a.name, &o.id) {
                    (done + 1, if done == 0 { now } else { started })
                } else if w.is_step(0, &a.name, &o.id) {
                    (1, now)
                } else {
                    continue;
                };
                dirty = true;
                if done < w.steps.len() {
                    st.rec.progress.insert(w.name.to_string(), (done, started));
                    continue;
                }
                st.rec.progress.remove(&*w.name);
                completed.push(w.name.clone());
                out.push(self.event(
                    t,
                    events::WORKFLOW_COMPLETED,
                    props([
                        ("workflow_name", json!(&*w.name)),
                        ("steps_completed", json!(done)),
                        ("duration_seconds", json!(now.saturating_sub(started))),
                    ]),
                ));
                self.count(&t.id, counter::WORKFLOWS).await?;
                let in_session = self
                    .store()
                    .incr(
                        &akey(&t.id, &format!("sessions/{session}/workflows")),
                        1,
                        Some(SESSION_TTL),
                    )
                    .await?;
                if in_session >= 3 {
                    let what = format!(
                        "completed {in_session} workflows in one session (latest: {})",
                        w.name
                    );
                    self.alert(t, Condition::HighIntent, &what, now).await?;
                }
            }
        }

        // sandbox_data_uploaded: a write that created the tenant's own
        // state: an object of a stateful facade, or a backend's 201.
        let created = match (op, obs.created) {
            (Some((a, _)), Some((resource, n))) => {
                a.resources.get(resource).map(|r| (r.clone(), n))
            }
            (Some((_, o)), None) if obs.backend && obs.status == 201 && served => {
                Some((o.tag.clone().unwrap_or_else(|| o.id.clone()), 1))
            }
            _ => None,
        };
        if let Some((data_type, n)) = created.filter(|_| !obs.dry_run) {
            out.push(self.event(
                t,
                events::DATA_UPLOADED,
                props([
                    ("data_type", json!(&*data_type)),
                    ("record_count", json!(n)),
                ]),
            ));
            self.count(&t.id, counter::DATA_UPLOADS).await?;
            let what = format!(
                "uploaded its own data ({n} {data_type} record{})",
                if n == 1 { "" } else { "s" }
            );
            self.alert(t, Condition::HighIntent, &what, now).await?;
        }

        // sandbox_error_encountered: 5xx, and refusals that are not rate limits.
        let refused = obs.code.filter(|c| !RATE_LIMIT_CODES.contains(c));
        if obs.status >= 500 || refused.is_some() {
            let error_type = refused.or(obs.code).unwrap_or("http_5xx");
            let severity = if obs.status >= 500 {
                "high"
            } else if matches!(obs.stage, Some("identify" | "admit")) {
                "medium"
            } else {
                "low"
            };
            let feature = op.map(|(_, o)| o.id.clone());
            out.push(self.event(
                t,
                events::ERROR_ENCOUNTERED,
                props([
                    ("error_type", json!(error_type)),
                    ("feature_name", json!(feature.as_deref())),
                    ("severity", json!(severity)),
                ]),
            ));
            self.count(&t.id, counter::ERRORS).await?;
            let in_session = self
                .store()
                .incr(
                    &akey(&t.id, &format!("sessions/{session}/errors")),
                    1,
                    Some(SESSION_TTL),
                )
                .await?;
            if in_session >= 2 {
                let what = format!(
                    "hit {in_session} errors in one session (latest: {error_type}{})",
                    feature.map(|f| format!(" on {f}")).unwrap_or_default()
                );
                self.alert(t, Condition::ErrorRisk, &what, now).await?;
            }
        }

        if dirty || now.saturating_sub(st.written) >= WRITE_EVERY || now < st.written {
            let rec = serde_json::to_vec(&st.rec).unwrap_or_default();
            self.store().put(&akey(&t.id, "session"), rec, None).await?;
            st.written = now;
        }
        let used = op.filter(|_| success).map(|(_, o)| o.id.clone());
        self.finish(s, t, st, out, used.as_deref(), &completed, now)
            .await
    }

    /// Emits `out` and the milestones they (or a successful request to
    /// `used`, or the `completed` workflows) achieve.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &mut self,
        s: &Settings,
        t: &Tenant,
        st: &mut TenantState,
        out: Vec<Event>,
        used: Option<&str>,
        completed: &[Arc<str>],
        now: u64,
    ) -> Result<(), StoreError> {
        let total = s.milestones.len();
        let mut achieved = Vec::new();
        for (i, m) in s.milestones.iter().enumerate() {
            if st.milestones.contains(&i) {
                continue;
            }
            let hit = match &m.kind {
                MilestoneKind::Operation(id) => used == Some(&**id),
                MilestoneKind::Workflow(name) => completed.contains(name),
                MilestoneKind::Event(name) => out.iter().any(|e| e.name == *name),
            };
            if !hit {
                continue;
            }
            st.milestones.insert(i);
            if self
                .once(&t.id, &format!("milestones/{}", m.name), now, None)
                .await?
            {
                achieved.push(self.event(
                    t,
                    events::MILESTONE_ACHIEVED,
                    props([
                        ("milestone_name", json!(&*m.name)),
                        ("milestone_index", json!(i + 1)),
                        ("total_milestones", json!(total)),
                    ]),
                ));
                let n = self.count(&t.id, counter::MILESTONES).await?;
                if usize::try_from(n).is_ok_and(|n| n >= total) {
                    let what = format!("achieved all {total} milestones (last: {})", m.name);
                    self.alert(t, Condition::EvaluationComplete, &what, now)
                        .await?;
                }
            }
        }
        for e in out.into_iter().chain(achieved) {
            self.sinks.emit(e);
        }
        Ok(())
    }

    /// The stall sweep: an active tenant that has logged in and then shown
    /// no activity for `stall_after` of its own time has stalled.
    async fn sweep(&mut self, s: &Settings) -> Result<(), StoreError> {
        if !self.alerter.enabled() {
            return Ok(());
        }
        let real_now = crate::tenants::now_secs();
        for t in self.registry.list().await? {
            if t.status(real_now) != crate::tenants::Status::Active {
                continue;
            }
            let last = match self.tenants.get(&t.id) {
                Some(st) if st.rec.number > 0 => st.rec.last,
                _ => match self.store().get(&akey(&t.id, "session")).await? {
                    Some(v) => match serde_json::from_slice::<SessionRecord>(&v) {
                        Ok(r) if r.number > 0 => r.last,
                        _ => continue,
                    },
                    None => continue,
                },
            };
            let now = crate::clock::tenant_now(&self.registry, &t.id).await?.now;
            let idle = now.saturating_sub(last);
            if idle >= s.alerts.stall_after {
                let what = format!(
                    "no activity for {} since its last session",
                    humantime::format_duration(Duration::from_secs(idle))
                );
                self.alert(&t, Condition::Stall, &what, now).await?;
            }
        }
        Ok(())
    }
}

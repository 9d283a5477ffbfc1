//! Admit: an identified tenant may use this API now: its sandbox is active
//! (not expired, not deactivated) and includes the API.

use crate::pipeline::identify::Principal;
use crate::refusal::Refusal;
use crate::sandbox::Api;
use crate::tenants::Status;

/// Admits `principal` to `api` at `now` (Unix seconds).
pub fn admit(api: &Api, principal: &Principal, now: u64) -> Result<(), Refusal> {
    let t = &principal.tenant;
    match t.status(now) {
        Status::Active => {}
        Status::Expired => {
            return Err(Refusal::SandboxExpired {
                id: t.id.clone(),
                expired_at: humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.expires_at),
                )
                .to_string(),
            });
        }
        // A deactivated sandbox's key no longer resolves; this is a guard.
        Status::Deactivated => return Err(Refusal::UnknownApiKey),
    }
    if let Some(enabled) = &t.features_enabled
        && !enabled.iter().any(|f| **f == *api.name)
    {
        return Err(Refusal::FeatureNotEnabled {
            api: api.name.to_string(),
            enabled: enabled.clone(),
        });
    }
    Ok(())
}

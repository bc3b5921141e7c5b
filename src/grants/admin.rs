//! `pleo-gateway grants list|revoke SUBJECT`: the operator's view of background grants, run
//! against the configured store (Redis: the memory store lives in one gateway process).

use std::io::Write;

use crate::{
    config::{Config, SessionStoreKind},
    session::{Store, now_ms},
};

/// The store of a running deployment; the memory store is refused (it is not shared).
async fn open(config: &Config) -> anyhow::Result<Store> {
    if config.session.store == SessionStoreKind::Memory {
        anyhow::bail!(
            "session.store = \"memory\" lives inside one gateway process; grants can only be managed with store = \"redis\""
        );
    }
    crate::state::open_store(config).await
}

/// Prints every subject with a background grant: subject, a short form of the grant's key (as
/// the gateway's logs name it) and whether it is still there. Slots whose grant is gone are
/// cleared on the way.
pub async fn list(config: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    let store = open(config).await?;
    let now = now_ms();
    writeln!(out, "{:<60} {:<14} state", "subject", "grant")?;
    for (subject, key) in store.grant_slots().await? {
        let state = if store.load(&key, now).await?.is_some() {
            "live"
        } else {
            store.clear_grant_slot(&subject, Some(&key)).await?;
            "gone (slot cleared)"
        };
        let short = &key[..12.min(key.len())];
        writeln!(out, "{subject:<60} {short:<14} {state}")?;
    }
    Ok(())
}

/// Removes `subject`'s background grant: the slot is emptied and the record goes back to being
/// only its browser session's (deleted now if that has ended). Pleo is not told: to revoke the
/// installation itself, disconnect.
pub async fn revoke(config: &Config, subject: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let store = open(config).await?;
    let Some(key) = store.grant_slot(subject).await? else {
        anyhow::bail!("no background grant for {subject}");
    };
    store.clear_grant_slot(subject, Some(&key)).await?;
    store.release(&key, now_ms()).await?;
    writeln!(out, "revoked the background grant of {subject}")?;
    Ok(())
}

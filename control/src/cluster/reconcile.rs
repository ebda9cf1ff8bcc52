//! The loop both of the leader's writers run ([`super::status`],
//! [`super::waypoints`]): while this replica leads, turn each snapshot into
//! what the cluster should hold, one value per object, and write each value
//! that differs from the last one written; retry failures on the next
//! change or after [`RETRY`]; on becoming leader again, write everything
//! (another replica's writes may be stale).

use std::{collections::BTreeMap, fmt};

use futures::future::BoxFuture;
use tokio::sync::watch;

/// How soon failed writes are tried again without a change.
pub const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes one value (its object named by the key) with the writer's own
/// state.
pub type Write<T, K, V, E> = for<'a> fn(&'a mut T, &'a K, &'a V) -> BoxFuture<'a, Result<(), E>>;

/// Runs until `source` closes. `desired` maps a snapshot to the values to
/// write; `write` writes one with `state`; a failure is logged as `what`.
pub async fn while_leading<S, T, K, V, E>(
    mut leader: watch::Receiver<bool>,
    mut source: watch::Receiver<S>,
    what: &'static str,
    desired: impl Fn(&S) -> BTreeMap<K, V>,
    mut state: T,
    write: Write<T, K, V, E>,
) where
    K: Ord + Clone + fmt::Debug,
    V: PartialEq + Clone,
    E: fmt::Display,
{
    loop {
        if leader.wait_for(|leading| *leading).await.is_err() {
            return;
        }
        let mut written: BTreeMap<K, V> = BTreeMap::new();
        loop {
            let wanted = desired(&source.borrow_and_update());
            let mut failed = false;
            for (key, value) in &wanted {
                if written.get(key) == Some(value) {
                    continue;
                }
                match write(&mut state, key, value).await {
                    Ok(()) => {
                        written.insert(key.clone(), value.clone());
                    }
                    Err(err) => {
                        failed = true;
                        tracing::warn!(object = ?key, %err, "{what}");
                    }
                }
            }
            written.retain(|key, _| wanted.contains_key(key));
            tokio::select! {
                changed = source.changed() => if changed.is_err() { return },
                _ = leader.changed() => if !*leader.borrow() { break },
                _ = tokio::time::sleep(RETRY), if failed => {}
            }
        }
    }
}

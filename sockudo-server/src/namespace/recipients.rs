//! A channel's recipients as the fanout sees them: an immutable snapshot, shared by every
//! delivery until a subscribe or unsubscribe replaces it.
//!
//! Why: the recipient loop of a large channel takes milliseconds. Run under the channel map's
//! shard lock, it blocked every subscribe, unsubscribe and presence write of every channel in
//! that shard meanwhile. The fanout now takes the lock only to clone the snapshot (an `Arc`),
//! rebuilding it first when a subscription changed since it was built (once per change
//! batch, not per delivery), and loops without any lock.
//!
//! A delivery that took its snapshot before an unsubscribe may still be looping when the
//! unsubscribe returns: each recipient carries its subscription's `active` flag, cleared by
//! the unsubscribe under the channel's lock and checked just before queuing, so the window is
//! the one a frame queued an instant earlier always had. A subscriber added after a snapshot
//! was taken is not in it; see [`super::Namespace::deliver_positioned`] for why positioned
//! messages released under an older snapshot are still covered by the new subscriber's
//! stream position.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use sockudo_core::protocol::events::Family;
use sockudo_core::protocol::{OutboundFrame, ProtocolVersion};

use super::{Channel, Delivery};
use crate::connection::Connection;

/// One subscription in a snapshot.
#[derive(Debug)]
pub(super) struct Recipient {
    pub(super) socket_id: Arc<str>,
    pub(super) conn: Arc<Connection>,
    pub(super) active: Arc<AtomicBool>,
}

impl Recipient {
    pub(super) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }
}

/// A channel's current snapshot, `None` after a subscription change.
#[derive(Debug, Default)]
pub(super) struct SnapshotCell(Mutex<Option<Arc<[Recipient]>>>);

impl SnapshotCell {
    /// Forget the snapshot (call under the channel's write lock, after the change).
    pub(super) fn invalidate(&self) {
        *self.0.lock() = None;
    }
}

/// The channel's snapshot, built when missing. Call under the channel's (read) lock, so no
/// subscription changes while it is built.
pub(super) fn snapshot(ch: &Channel) -> Arc<[Recipient]> {
    let mut cell = ch.recipients.0.lock();
    if let Some(s) = &*cell {
        return Arc::clone(s);
    }
    let built: Arc<[Recipient]> = ch
        .subscribers
        .iter()
        .map(|(sid, sub)| Recipient {
            socket_id: Arc::clone(sid),
            conn: Arc::clone(&sub.conn),
            active: Arc::clone(&sub.active),
        })
        .collect();
    *cell = Some(Arc::clone(&built));
    built
}

/// Queue `d` to every active recipient except its excluded socket; returns how many.
pub(super) fn fanout_to(key: &Arc<str>, recipients: &[Recipient], d: &Delivery<'_>) -> usize {
    let mut n = 0;
    for r in recipients {
        if !r.is_active() {
            continue;
        }
        if d.except.is_some_and(|e| e == &*r.socket_id) {
            withheld(key, &r.conn, d);
            continue;
        }
        let sent = match (r.conn.protocol, &d.v2, d.serial) {
            (ProtocolVersion::V2, Some(v2), Some(serial)) => {
                r.conn.send_positioned(key, d.stream_id, serial, v2.clone())
            }
            (ProtocolVersion::V2, Some(v2), None) => r.conn.send_on(key, v2.clone()),
            _ => r.conn.send_on(key, d.v1.clone()),
        };
        if sent {
            n += 1;
        }
    }
    n
}

/// The excluded publisher of a positioned message: a V2 connection is told the serial was
/// used (`sockudo_internal:position`), so the hole in its serials is not a gap to resume.
/// Built for this one connection only (at most one per broadcast).
fn withheld(key: &Arc<str>, conn: &Connection, d: &Delivery<'_>) {
    if let (ProtocolVersion::V2, Some(serial), Some(stream_id)) =
        (conn.protocol, d.serial, d.stream_id)
    {
        let frame = OutboundFrame::position(Family::Sockudo, key, stream_id, serial);
        conn.send_positioned(key, Some(stream_id), serial, frame.into());
    }
}

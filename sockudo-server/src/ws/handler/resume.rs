//! `sockudo:resume` in any order relative to the subscribes, and the deadlines of what waits
//! (see [`super::super::resume_waits`]).

use tokio::time::Instant;

use super::super::v2;
use super::{Flow, Session};

impl Session {
    /// `sockudo:resume`: channels already subscribed are resumed now; the others' positions
    /// wait (bounded) for their subscribe (see [`ResumeWaits`]).
    pub(super) async fn resume(&mut self, d: v2::ResumeData) -> Flow {
        let deadline =
            Instant::now() + std::time::Duration::from_secs(self.node.settings.resume_pending_secs);
        let mut now = Vec::new();
        for (name, position) in d.channel_positions {
            if self.channels.contains(name.as_str()) {
                self.waits.end_grace(&name);
                now.push((name, position));
            } else {
                let client = v2::client_position(&position);
                if !self.waits.park(name.clone(), position, deadline) {
                    let (_, frame) = v2::unresumable(
                        &name,
                        &client,
                        "too many channels waiting for their subscribe",
                    );
                    self.conn.send_text(frame);
                }
            }
        }
        if now.is_empty() {
            return Flow::Continue;
        }
        let channels = &self.channels;
        let subscribed = |name: &str| channels.get(name).cloned();
        Flow::Resume(v2::plan_resume(&self.node, &self.conn, &self.ns, &subscribed, now).await)
    }

    /// Whether a resume wait has a deadline pending (checked by the connection loop).
    pub fn has_waits(&self) -> bool {
        !self.waits.is_empty()
    }

    /// The earliest resume-wait deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waits.next_deadline()
    }

    /// Act on resume waits that are due: a parked position whose channel was never
    /// subscribed fails closed; a grace hold with no resume is released in order.
    pub fn on_deadline(&mut self, now: Instant) {
        let expired = self.waits.expired(now);
        for (name, position) in expired.parked {
            let reason = format!(
                "the channel was not subscribed within {} s of the resume",
                self.node.settings.resume_pending_secs
            );
            let (_, frame) = v2::unresumable(&name, &v2::client_position(&position), &reason);
            self.conn.send_text(frame);
        }
        for channel in expired.grace {
            self.conn.release_to_queue(&channel);
        }
    }
}

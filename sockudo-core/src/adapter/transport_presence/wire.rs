//! The messages of the presence topic (JSON, one per transport message).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::super::AdapterError;
use super::replica::Contribs;

/// A full state is cut into chunks of about this many bytes of entries (NATS refuses
/// messages above 1 MiB by default).
const CHUNK_BYTES: usize = 128 * 1024;

/// One entry of a full state: app, channel, user, info.
pub(super) type Entry = (String, String, String, Option<String>);

/// Every message names its sender: node id `n` and epoch `e` (its incarnation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(super) enum Wire {
    /// One change of the sender's own contributions; `s` numbers the sender's deltas
    /// (1, 2, …, no gaps), `c` is the sender's clock after it.
    Delta {
        n: String,
        e: u64,
        s: u64,
        c: u64,
        a: String,
        ch: String,
        u: String,
        i: Option<String>,
        j: bool,
        /// The number of the member event the sender announced with this change (a first
        /// join or a last leave); 0: none.
        #[serde(default)]
        q: u64,
    },
    /// Periodic: the sender is at delta `s`, its contributions hash to `d`, every number
    /// it hands out later is above `c`.
    Digest {
        n: String,
        e: u64,
        s: u64,
        c: u64,
        d: u64,
    },
    /// A full state starts: the contributions of incarnation `of` (`None`: the sender's
    /// own) as of delta `s` and clock `c`. Chunks and the end follow from the same sender.
    Begin {
        n: String,
        e: u64,
        of: Option<(String, u64)>,
        s: u64,
        c: u64,
    },
    /// Entries of the full state in progress.
    Chunk {
        n: String,
        e: u64,
        entries: Vec<Entry>,
    },
    /// The full state is complete; its entries hash to `d`.
    End { n: String, e: u64, d: u64 },
    /// Please publish your full state (`target`: only that node; `None`: everybody, and
    /// relay what you hold of other incarnations of my node id).
    Sync {
        n: String,
        e: u64,
        target: Option<String>,
    },
    /// The sender took over its node id: forget these earlier epochs of it for good.
    Retire {
        n: String,
        e: u64,
        retired: Vec<u64>,
    },
    /// The sender left the cluster (its contributions were withdrawn before).
    Bye { n: String, e: u64 },
}

impl Wire {
    /// The sender `(node, epoch)`.
    pub fn sender(&self) -> (&str, u64) {
        match self {
            Wire::Delta { n, e, .. }
            | Wire::Digest { n, e, .. }
            | Wire::Begin { n, e, .. }
            | Wire::Chunk { n, e, .. }
            | Wire::End { n, e, .. }
            | Wire::Sync { n, e, .. }
            | Wire::Retire { n, e, .. }
            | Wire::Bye { n, e } => (n, *e),
        }
    }

    pub fn encode(&self) -> Result<Bytes, AdapterError> {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|e| AdapterError::Malformed(e.to_string()))
    }

    pub fn decode(b: &[u8]) -> Result<Wire, AdapterError> {
        serde_json::from_slice(b).map_err(|e| AdapterError::Malformed(e.to_string()))
    }
}

/// The messages of one full state (`Begin`, `Chunk`s, `End`).
pub(super) fn full_state(
    node: &str,
    epoch: u64,
    of: Option<(String, u64)>,
    s: u64,
    c: u64,
    contribs: &Contribs,
    d: u64,
) -> Vec<Wire> {
    let mut out = vec![Wire::Begin {
        n: node.to_owned(),
        e: epoch,
        of,
        s,
        c,
    }];
    let mut entries = Vec::new();
    let mut size = 0usize;
    for ((app, ch), users) in contribs {
        for (u, i) in users {
            size += app.len() + ch.len() + u.len() + i.as_ref().map_or(4, String::len) + 16;
            entries.push((app.clone(), ch.clone(), u.clone(), i.clone()));
            if size >= CHUNK_BYTES {
                out.push(Wire::Chunk {
                    n: node.to_owned(),
                    e: epoch,
                    entries: std::mem::take(&mut entries),
                });
                size = 0;
            }
        }
    }
    if !entries.is_empty() {
        out.push(Wire::Chunk {
            n: node.to_owned(),
            e: epoch,
            entries,
        });
    }
    out.push(Wire::End {
        n: node.to_owned(),
        e: epoch,
        d,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_states_are_chunked_and_round_trip() {
        let mut c = Contribs::new();
        let users = c.entry(("app".into(), "presence-x".into())).or_default();
        for i in 0..5000 {
            users.insert(format!("user-{i}"), Some("x".repeat(40)));
        }
        let msgs = full_state("n", 1, None, 3, 9, &c, 42);
        assert!(msgs.len() > 3, "cut into several chunks");
        let mut n = 0;
        for m in &msgs {
            let b = m.encode().unwrap_or_default();
            assert!(b.len() < 512 * 1024);
            let back = Wire::decode(&b).ok();
            assert_eq!(back.as_ref(), Some(m));
            if let Some(Wire::Chunk { entries, .. }) = back {
                n += entries.len();
            }
        }
        assert_eq!(n, 5000);
        assert!(Wire::decode(b"{\"t\":\"delta\"}").is_err());
    }
}

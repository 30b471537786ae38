//! Raising this process's open-file limit so thousands of sockets fit.

/// Raise `RLIMIT_NOFILE` soft limit to the hard limit; returns the limit now in force.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// File descriptors the tool needs beyond one per WebSocket: HTTP pool, stdio, runtime, slack.
pub const FD_OVERHEAD: u64 = 64;

/// `Err(message)` when `connections + publishers` sockets cannot fit under `limit`.
pub fn check_capacity(connections: u64, publishers: u64, limit: u64) -> Result<(), String> {
    let needed = connections + publishers + FD_OVERHEAD;
    if needed > limit {
        Err(format!(
            "--connections {connections} needs about {needed} open files but RLIMIT_NOFILE is {limit} \
             (already raised to the hard limit). Raise the hard limit first, e.g. `ulimit -Hn {needed}` \
             as root or LimitNOFILE= in the unit file, or lower --connections. The server needs the same."
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_check() {
        assert!(check_capacity(1000, 4, 20_000).is_ok());
        let err = check_capacity(20_000, 4, 20_000).unwrap_err();
        assert!(err.contains("RLIMIT_NOFILE is 20000"));
    }
}

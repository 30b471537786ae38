//! Resident set size from `/proc/{pid}/status` (Linux only; `None` elsewhere or on error).

/// `VmRSS` of process `pid` in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    read_status_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// `VmRSS` of this process in KiB.
pub fn self_rss_kib() -> Option<u64> {
    read_status_field("/proc/self/status", "VmRSS:")
}

fn read_status_field(path: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    parse_kib(&status, field)
}

/// Parse a `Field:   1234 kB` line out of a `/proc/*/status` text.
fn parse_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vmrss_line() {
        let status = "Name:\tsockudo\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_kib(status, "VmRSS:"), Some(12345));
        assert_eq!(parse_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn reads_own_rss() {
        if cfg!(target_os = "linux") {
            assert!(self_rss_kib().unwrap_or(0) > 0);
        }
    }
}

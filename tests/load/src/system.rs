//! What ds-load needs from the operating system: a high enough open-files
//! limit for thousands of connections, and a process's resident memory
//! (VmRSS from `/proc/PID/status`) for the fan-out scenario.

/// Why a process's memory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot read /proc/{pid}/status: {cause}")]
    Read { pid: u32, cause: std::io::Error },
    #[error("/proc/{pid}/status has no readable VmRSS line")]
    NoRss { pid: u32 },
}

/// Raises this process's soft open-files limit as far as the hard limit
/// allows; returns the limit now in force.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The resident set size of process `pid`, in bytes.
pub fn resident_bytes(pid: u32) -> Result<u64, MemoryError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|cause| MemoryError::Read { pid, cause })?;
    parse_vm_rss(&status).ok_or(MemoryError::NoRss { pid })
}

/// The `VmRSS:   123 kB` line of a `/proc/PID/status` text, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    let multiplier = match fields.next() {
        Some("kB") | None => 1024,
        Some("mB") => 1024 * 1024,
        Some(_) => return None,
    };
    Some(value * multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tstream-server\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(5120 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn reads_own_memory_and_raises_limit() {
        let rss = resident_bytes(std::process::id()).unwrap();
        assert!(rss > 0);
        assert!(raise_open_files_limit().unwrap() > 0);
    }
}

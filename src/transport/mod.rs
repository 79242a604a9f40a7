//! The network edge of both ports: accepting connections within a cap (beyond it a connection
//! is closed at once, and accepting never stops), TLS with certificates reloaded on SIGHUP and
//! optional client certificates, handshake and header timeouts, and the process's open-file
//! limit. The HTTP port is served by [`http`]; the gRPC port by tonic over [`listener`]'s
//! connections.

pub mod connection;
pub mod http;
pub mod listener;
pub mod tls;

/// Raises the soft open-file limit to the hard limit (each connection costs a descriptor);
/// returns the limits before and after.
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by reference.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

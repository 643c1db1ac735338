//! Which process opened a loopback TCP connection, found the way `ss -p` does on Linux: the
//! socket whose local port is the connection's peer port (in `/proc/net/tcp` and `tcp6`), then
//! the process holding that socket (a `socket:[inode]` link under `/proc/PID/fd`).

use std::fs;

/// The process whose socket has local port `port` on loopback, if there is one. A scan that
/// finds none is tried again a few times: `/proc` is read file by file while processes open
/// and close sockets, so one scan can miss a socket that is there.
pub(crate) fn owner_of(port: u16) -> Option<u32> {
    for attempt in 0..4 {
        if let Some(pid) = scan(port) {
            return Some(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
    }
    None
}

fn scan(port: u16) -> Option<u32> {
    let inode = socket_inode(port)?;
    let wanted = format!("socket:[{inode}]");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == wanted.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The inode of the TCP socket whose local port is `port`.
fn socket_inode(port: u16) -> Option<u64> {
    let local = format!(":{port:04X}");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl, local_address, rem_address, st, tx:rx, tr:when, retrnsmt, uid, timeout, inode
            if fields.len() > 9
                && fields[1].ends_with(&local)
                && let Ok(inode) = fields[9].parse::<u64>()
                && inode != 0
            {
                return Some(inode);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_connection_of_this_process_is_found_to_be_its_own() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let port = client.local_addr().unwrap().port();
        assert_eq!(super::owner_of(port), Some(std::process::id()));
    }
}

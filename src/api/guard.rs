//! The checks every request passes before any handler, as qBittorrent makes
//! them: the Host header must name this server (DNS rebinding: a page on
//! evil.example whose name resolves to 127.0.0.1 must not reach the API,
//! Transmission CVE-2018-5702), and a state-changing request that carries
//! an Origin or Referer must come from a page of this same host (CSRF).
//! Both refusals are 401, as qBittorrent answers them.
//!
//! Pure functions over header values; the middleware in `mod.rs` applies them.

use std::net::SocketAddr;

/// The Host names this server answers to.
#[derive(Debug, Clone)]
pub struct Hosts {
    port: u16,
    /// Names accepted with this server's port (or none).
    names: Vec<String>,
}

impl Hosts {
    pub fn new(listen: SocketAddr, extra: &[String]) -> Hosts {
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()];
        names.push(match listen.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
        names.extend(extra.iter().map(|h| h.trim().to_ascii_lowercase()));
        Hosts { port: listen.port(), names }
    }

    /// Whether a Host header value names this server: a known name, with
    /// our port or (behind a proxy on 80/443) without one. Extra names given
    /// with a port must match it exactly.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        if self.names.contains(&host) {
            return true;
        }
        match split_port(&host) {
            Some((name, port)) => port == self.port && self.names.iter().any(|n| n == name),
            None => false,
        }
    }
}

/// "name:port" into its parts ("[v6]:port" too); None without a port.
fn split_port(host: &str) -> Option<(&str, u16)> {
    let (name, port) = host.rsplit_once(':')?;
    if name.contains(':') && !name.ends_with(']') {
        return None; // a bare IPv6 address, no port
    }
    Some((name, port.parse().ok()?))
}

/// The authority ("host:port") of an Origin or Referer URL.
fn authority(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let auth = &rest[..end];
    // Credentials in a URL are never part of the host.
    Some(auth.rsplit_once('@').map_or(auth, |(_, h)| h))
}

/// Whether a state-changing request may proceed: with no Origin and no
/// Referer (a script, not a browser), yes; otherwise each present one must
/// name the host the request was sent to.
pub fn same_origin(host: &str, origin: Option<&str>, referer: Option<&str>) -> bool {
    let host = host.trim().to_ascii_lowercase();
    [origin, referer].into_iter().flatten().all(|v| authority(v.trim()).is_some_and(|a| a.to_ascii_lowercase() == host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Hosts {
        Hosts::new("127.0.0.1:8080".parse().unwrap(), &["Seedbox.example.org".into()])
    }

    #[test]
    fn the_server_own_names_pass() {
        let h = hosts();
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "[::1]:8080",
            "seedbox.example.org",
            "seedbox.example.org:8080",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
    }

    #[test]
    fn a_rebound_name_or_another_port_is_refused() {
        let h = hosts();
        for bad in [
            "evil.example:8080",
            "evil.example",
            "127.0.0.1:9090",
            "localhost.evil.example:8080",
            "",
            "127.0.0.1:8080@evil",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
    }

    #[test]
    fn a_v6_listener_names_itself_in_brackets() {
        let h = Hosts::new("[2001:db8::1]:8080".parse().unwrap(), &[]);
        assert!(h.allows("[2001:db8::1]:8080"));
        assert!(!h.allows("2001:db8::1"));
    }

    #[test]
    fn cross_origin_posts_are_refused() {
        let host = "127.0.0.1:8080";
        assert!(same_origin(host, None, None), "a script sends neither");
        assert!(same_origin(host, Some("http://127.0.0.1:8080"), Some("http://127.0.0.1:8080/index.html")));
        assert!(!same_origin(host, Some("http://evil.example"), None));
        assert!(!same_origin(host, None, Some("https://evil.example/page?x=127.0.0.1:8080")));
        assert!(!same_origin(host, Some("http://127.0.0.1:8080"), Some("http://evil.example/")));
        assert!(!same_origin(host, Some("http://127.0.0.1:8080@evil.example"), None));
        assert!(!same_origin(host, Some("null"), None));
    }
}

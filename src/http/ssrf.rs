//! The server-side request forgery guard: a URL a merchant gives us (its `notify_url`)
//! must not make the gateway call into its own network. Addresses that are loopback,
//! private, shared (CGNAT), link-local (including the cloud metadata address
//! 169.254.169.254), unique-local, multicast, broadcast or unspecified are refused —
//! when the URL is accepted, and again at every connection, since DNS can change in
//! between (the guarded resolver of [`crate::http::client::HttpClient`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hyper_util::client::legacy::connect::dns::Name;

/// Why `ip` may not be called, or `None` when it is a public address.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique-local")
            } else if first & 0xffc0 == 0xfec0 {
                Some("site-local")
            } else if v6.segments()[..6] == [0, 0, 0, 0, 0, 0] {
                // IPv4-compatible (deprecated): ::a.b.c.d reaches a.b.c.d on some stacks.
                forbidden_v4(Ipv4Addr::from(u32::from(v6.segments()[6]) << 16 | u32::from(v6.segments()[7])))
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if a == 0 {
        Some("unspecified")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (CGNAT)")
    } else {
        None
    }
}

/// The host of an `http://` or `https://` URL, without IPv6 brackets.
pub fn host_of(url: &str) -> Result<String, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must be an http:// or https:// URL".into()),
    }
    let host = uri.host().filter(|h| !h.is_empty()).ok_or("has no host")?;
    Ok(host.trim_start_matches('[').trim_end_matches(']').to_owned())
}

/// Checks a resolved address list: the public ones, or why there are none.
fn public_only(host: &str, addrs: impl Iterator<Item = SocketAddr>) -> Result<Vec<SocketAddr>, String> {
    let mut refused = None;
    let public: Vec<SocketAddr> = addrs
        .filter(|a| match forbidden(a.ip()) {
            Some(why) => {
                refused = Some((a.ip(), why));
                false
            }
            None => true,
        })
        .collect();
    match (public.is_empty(), refused) {
        (false, _) => Ok(public),
        (true, Some((ip, why))) => Err(format!("{host} resolves to {ip}, a {why} address")),
        (true, None) => Err(format!("{host} does not resolve")),
    }
}

/// Refuses `host` (a name or a literal) when it is, or resolves to, a non-public address.
pub async fn check_host(host: &str) -> Result<(), String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return match forbidden(ip) {
            Some(why) => Err(format!("{ip} is a {why} address")),
            None => Ok(()),
        };
    }
    // A name that does not resolve now (or not in time) is not refused here: DNS may be
    // down for a moment, and every connection checks again.
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, 80))).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            match addrs.is_empty() {
                true => Ok(()),
                false => public_only(host, addrs.into_iter()).map(|_| ()),
            }
        }
        Ok(Err(_)) | Err(_) => Ok(()),
    }
}

/// The longest a pay waits for its notify URL's name to resolve.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a name's verdict is reused at pay time.
const VERDICT_TTL: Duration = Duration::from_secs(60);
/// Most names remembered; beyond it the memory is cleared (it is only a cache).
const VERDICTS_KEPT: usize = 10_000;

/// Checks merchants' URLs when they are given: a name is resolved once a minute at
/// most, so a merchant sending every order with the same `notify_url` pays for one
/// lookup, not one per payment. Connections are checked again regardless.
#[derive(Default)]
pub struct UrlGuard {
    verdicts: DashMap<String, (Instant, Result<(), String>)>,
}

impl UrlGuard {
    /// Refuses `url` unless its host has a public address.
    pub async fn check(&self, url: &str) -> Result<(), String> {
        let host = host_of(url)?;
        if host.parse::<IpAddr>().is_ok() {
            return check_host(&host).await;
        }
        if let Some(v) = self.verdicts.get(&host).filter(|v| v.0.elapsed() < VERDICT_TTL) {
            return v.1.clone();
        }
        let verdict = check_host(&host).await;
        if self.verdicts.len() >= VERDICTS_KEPT {
            self.verdicts.clear();
        }
        self.verdicts.insert(host, (Instant::now(), verdict.clone()));
        verdict
    }
}

/// The client's resolver: the system's, and with `public_only` only public addresses
/// (a name that has none fails to connect, naming the address it refused).
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver {
    /// Refuse non-public addresses.
    pub public_only: bool,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let public = self.public_only;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            if !public {
                return Ok(addrs.collect::<Vec<_>>().into_iter());
            }
            public_only(&host, addrs).map(Vec::into_iter).map_err(std::io::Error::other)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_every_internal_range() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
        ] {
            assert!(forbidden(ip.parse().unwrap()).is_some(), "{ip} must be refused");
        }
        for ip in ["8.8.8.8", "203.0.113.7", "100.128.0.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"] {
            assert_eq!(forbidden(ip.parse().unwrap()), None, "{ip} is public");
        }
    }

    #[test]
    fn hosts_are_read_from_urls() {
        assert_eq!(host_of("https://[::1]:8443/n").unwrap(), "::1");
        assert_eq!(host_of("http://Example.com/x?y").unwrap(), "Example.com");
        assert!(host_of("ftp://example.com/").is_err());
        assert!(host_of("http:///nohost").is_err());
    }

    #[tokio::test]
    async fn names_are_checked_by_what_they_resolve_to() {
        let guard = UrlGuard::default();
        let err = guard.check("http://localhost:9/notify").await.unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        assert!(guard.check("http://169.254.169.254/latest/meta-data").await.unwrap_err().contains("link-local"));
        assert!(guard.check("http://203.0.113.7/n").await.is_ok());
        let mut resolver = GuardedResolver { public_only: true };
        let refused = tower_service::Service::call(&mut resolver, "localhost".parse().unwrap()).await.unwrap_err();
        assert!(refused.to_string().contains("loopback"), "{refused}");
        let mut open = GuardedResolver { public_only: false };
        assert!(tower_service::Service::call(&mut open, "localhost".parse().unwrap()).await.is_ok());
    }
}

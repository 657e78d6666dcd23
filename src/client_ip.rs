//! The client's address: what a token's `allow_ips` is checked against and
//! the access line's `client_ip`.
//!
//! The front end says who it heard the request from, as a [`Peer`] in the
//! request's extensions: the local server the TCP peer, Lambda the event's
//! `requestContext` source IP (Function URL, HTTP API, REST API). That is
//! the client, unless it is one of the operator's `TRUSTED_PROXIES`: then
//! `X-Forwarded-For` is read from the right, and the first address not in
//! that list is the client (an address a client wrote itself is to the left
//! of what its own proxy appended, so it is never reached). Without
//! `TRUSTED_PROXIES`, `X-Forwarded-For` is ignored: anyone can send it.

use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;
use ipnet::IpNet;

/// Who the front end heard the request from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub IpAddr);

impl Peer {
    /// The address as the rules compare it (an IPv4-mapped IPv6 address as
    /// the IPv4 address it is).
    pub fn new(address: IpAddr) -> Self {
        Self(address.to_canonical())
    }
}

/// The front end received the request over TLS (Lambda: Function URLs and
/// API Gateway answer https only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secure;

/// Whether the client reached the gateway over https: the front end says so
/// ([`Secure`]), or a trusted proxy's `X-Forwarded-Proto` (its last value,
/// the one that proxy wrote) is `https`.
pub fn is_https(extensions: &http::Extensions, headers: &HeaderMap, trusted: &[IpNet]) -> bool {
    if extensions.get::<Secure>().is_some() {
        return true;
    }
    let Some(Peer(peer)) = extensions.get::<Peer>().copied() else {
        return false;
    };
    within(trusted, peer)
        && headers
            .get_all("x-forwarded-proto")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// Parses a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (one
/// host). The network is kept as written, host bits cleared.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = IpNet::from_str(text) {
        return Ok(net.trunc());
    }
    IpAddr::from_str(text).map(IpNet::from).map_err(|_| {
        format!("`{text}` is not an IP address or a CIDR such as 203.0.113.0/24 or 2001:db8::/32")
    })
}

/// Parses a list of CIDRs, separated by commas or spaces (`TRUSTED_PROXIES`).
pub fn parse_list(text: &str) -> Result<Vec<IpNet>, String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|part| !part.is_empty())
        .map(parse_net)
        .collect()
}

/// Whether `address` is in any of `nets`.
pub fn within(nets: &[IpNet], address: IpAddr) -> bool {
    let address = address.to_canonical();
    nets.iter().any(|net| net.contains(&address))
}

/// The client's address: the [`Peer`], or, when the peer is a trusted
/// proxy, the rightmost `X-Forwarded-For` address that is not one (the
/// leftmost when all are). `None` when the front end named no peer, or a
/// trusted proxy's header holds something other than addresses (the client
/// is then unknown, and an `allow_ips` token is refused).
pub fn resolve(peer: Option<Peer>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let Peer(peer) = peer?;
    if trusted.is_empty() || !within(trusted, peer) {
        return Some(peer);
    }
    let mut client = peer;
    // Every header line, in order, read from the right: together they are
    // one list (RFC 9110 §5.3).
    for line in headers.get_all("x-forwarded-for").iter().rev() {
        for item in line.as_bytes().rsplit(|b| *b == b',') {
            // Not an address (`unknown`, a name): who sent it is unknown.
            let address = forwarded_address(item)?;
            client = address;
            if !within(trusted, address) {
                return Some(address);
            }
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` item: an address, maybe with a port
/// (`203.0.113.9:4711`, `[2001:db8::1]:4711`).
fn forwarded_address(item: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(item).ok()?.trim();
    if let Ok(address) = IpAddr::from_str(text) {
        return Some(address.to_canonical());
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (inner, _) = rest.split_once(']')?;
        return IpAddr::from_str(inner).ok().map(|a| a.to_canonical());
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    IpAddr::from_str(host).ok().map(|a| a.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append("x-forwarded-for", line.parse().unwrap());
        }
        map
    }

    #[test]
    fn nets_parse_as_written_or_refuse_with_a_clear_message() {
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            parse_net(" 203.0.113.9 ").unwrap().to_string(),
            "203.0.113.9/32"
        );
        assert_eq!(
            parse_net("2001:db8::1/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        for bad in ["10.0.0.0/33", "example.com", "", "10.0.0.0/", "1.2.3"] {
            let error = parse_net(bad).unwrap_err();
            assert!(error.contains("is not an IP address"), "{bad}: {error}");
        }
        assert_eq!(
            parse_list("10.0.0.0/8, 192.168.0.0/16 ::1").unwrap().len(),
            3
        );
        assert!(parse_list("10.0.0.0/8,nope").is_err());
        assert!(within(
            &parse_list("10.0.0.0/8").unwrap(),
            ip("::ffff:10.9.9.9")
        ));
        assert!(!within(&parse_list("10.0.0.0/8").unwrap(), ip("11.0.0.1")));
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() {
        let forged = headers(&["198.51.100.7"]);
        let peer = Some(Peer::new(ip("203.0.113.9")));
        assert_eq!(resolve(peer, &forged, &[]), Some(ip("203.0.113.9")));
        let trusted = parse_list("10.0.0.0/8").unwrap();
        assert_eq!(
            resolve(peer, &forged, &trusted),
            Some(ip("203.0.113.9")),
            "a peer outside the list is the client even with a header"
        );
        assert_eq!(resolve(None, &forged, &trusted), None);
        assert_eq!(
            resolve(Some(Peer::new(ip("::ffff:127.0.0.1"))), &forged, &[]),
            Some(ip("127.0.0.1"))
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_address_is_the_client() {
        let trusted = parse_list("10.0.0.0/8, 2001:db8::/32").unwrap();
        let peer = Some(Peer::new(ip("10.0.0.2")));
        // The client forged the leftmost entry; its proxy appended the real one.
        let chain = headers(&["6.6.6.6, 198.51.100.7, 10.0.0.5"]);
        assert_eq!(resolve(peer, &chain, &trusted), Some(ip("198.51.100.7")));
        // Split over header lines, with ports and brackets.
        let split = headers(&["6.6.6.6", "[2001:db9::7]:443, 2001:db8::1", "10.1.1.1:8080"]);
        assert_eq!(resolve(peer, &split, &trusted), Some(ip("2001:db9::7")));
        // All trusted: the leftmost.
        let inner = headers(&["10.0.0.9, 10.0.0.5"]);
        assert_eq!(resolve(peer, &inner, &trusted), Some(ip("10.0.0.9")));
        // No header: the proxy itself.
        assert_eq!(
            resolve(peer, &HeaderMap::new(), &trusted),
            Some(ip("10.0.0.2"))
        );
        // Garbage where a trusted proxy wrote: the client is unknown.
        let garbage = headers(&["198.51.100.7, unknown, 10.0.0.5"]);
        assert_eq!(resolve(peer, &garbage, &trusted), None);
        // Garbage left of the client is the client's own writing: ignored.
        let forged = headers(&["<script>, 198.51.100.7"]);
        assert_eq!(resolve(peer, &forged, &trusted), Some(ip("198.51.100.7")));
    }
}

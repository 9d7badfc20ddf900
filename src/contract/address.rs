//! The address an `ip` field carries: the address itself, or one written
//! with a port (`10.0.0.1:443`, `[2001:db8::1]:443`) or a zone
//! (`fe80::1%eth0`), as clients and proxies write them, or the first of an
//! `X-Forwarded-For` list (`203.0.113.7, 10.0.0.1`: the client, then the
//! proxies it passed). The token is the address's either way: a port or a
//! zone is how it was reached, not who; and an IPv4 address written as
//! IPv6 (`::ffff:1.2.3.4`, as dual-stack sockets report it) is that IPv4
//! address, with its token.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What was set aside to find the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressPart {
    /// A port, or the brackets of `[v6]` or `[v6]:port`.
    Port,
    /// An IPv6 zone (`%eth0`, `%2`).
    Zone,
    /// The addresses after the first of a comma-separated list.
    List,
}

/// The address in `text` (surrounding blanks ignored) and what was set
/// aside, or `None` when it holds no address.
pub fn parse(text: &str) -> Option<(IpAddr, Vec<AddressPart>)> {
    let (ip, mut parts) = match text.split_once(',') {
        None => one(text)?,
        Some((first, _)) => {
            let (ip, mut parts) = one(first)?;
            parts.push(AddressPart::List);
            (ip, parts)
        }
    };
    parts.sort();
    Some((ip.to_canonical(), parts))
}

/// One address, with a port or zone set aside.
fn one(text: &str) -> Option<(IpAddr, Vec<AddressPart>)> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some((ip, Vec::new()));
    }
    if let Some(inner) = text.strip_prefix('[') {
        let (inside, after) = inner.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        let (ip, mut parts) = v6_with_zone(inside)?;
        parts.insert(0, AddressPart::Port);
        return Some((IpAddr::V6(ip), parts));
    }
    if let Some((host, port)) = text.split_once(':')
        && is_port(port)
        && let Ok(ip) = host.parse::<Ipv4Addr>()
    {
        return Some((IpAddr::V4(ip), vec![AddressPart::Port]));
    }
    let (ip, parts) = v6_with_zone(text)?;
    Some((IpAddr::V6(ip), parts))
}

/// An IPv6 address, with a zone set aside if it has one.
fn v6_with_zone(text: &str) -> Option<(Ipv6Addr, Vec<AddressPart>)> {
    match text.split_once('%') {
        None => Some((text.parse().ok()?, Vec::new())),
        Some((ip, zone)) if is_zone(zone) => Some((ip.parse().ok()?, vec![AddressPart::Zone])),
        Some(_) => None,
    }
}

/// 1 to 5 digits, at most 65535.
fn is_port(text: &str) -> bool {
    (1..=5).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_digit())
        && text.parse::<u32>().is_ok_and(|p| p <= 65_535)
}

/// An interface name or index, as `ip` and `ifconfig` print them.
fn is_zone(text: &str) -> bool {
    (1..=32).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::AddressPart::*;
    use super::*;

    #[test]
    fn an_address_with_a_port_or_a_zone_is_the_address() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let link: IpAddr = "fe80::1".parse().unwrap();
        for (text, want) in [
            ("10.0.0.1", Some((v4, vec![]))),
            (" 10.0.0.1\t", Some((v4, vec![]))),
            ("10.0.0.1:443", Some((v4, vec![Port]))),
            ("[2001:db8::1]:443", Some((v6, vec![Port]))),
            ("[2001:db8::1]", Some((v6, vec![Port]))),
            ("fe80::1%eth0", Some((link, vec![Zone]))),
            ("fe80::1%2", Some((link, vec![Zone]))),
            ("[fe80::1%eth0]:8080", Some((link, vec![Port, Zone]))),
            ("", None),
            ("unknown", None),
            ("10.0.0.1:99999", None),
            ("10.0.0.1:", None),
            ("10.0.0.1%eth0", None),
            ("10.0.0.1, 10.0.0.2", Some((v4, vec![List]))),
            ("10.0.0.1:443,10.0.0.2", Some((v4, vec![Port, List]))),
            (" [2001:db8::1]:443 , x", Some((v6, vec![Port, List]))),
            ("::ffff:10.0.0.1", Some((v4, vec![]))),
            ("[::ffff:10.0.0.1]:443, ::1", Some((v4, vec![Port, List]))),
            ("unknown, 10.0.0.1", None),
            (", 10.0.0.1", None),
            ("[2001:db8::1]443", None),
            ("fe80::1%eth 0", None),
            ("999.1.1.1", None),
            ("10.0.0.1/24", None),
        ] {
            assert_eq!(parse(text), want, "{text:?}");
        }
    }
}

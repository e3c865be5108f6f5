//! The upstream servers of a resolv.conf: its `nameserver` lines, in order, without the
//! server's own address (no loops), at most [`MAX_SERVERS`] like glibc.

use std::net::IpAddr;

/// glibc uses the first three.
pub const MAX_SERVERS: usize = 3;

/// The servers of `text`, leaving out `own`.
pub fn nameservers(text: &str, own: &[IpAddr]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // An IPv6 link-local server may carry a zone (`fe80::1%eth0`): not usable from
        // the agent's sockets without it, so it is left out.
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        if !own.contains(&ip) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out.truncate(MAX_SERVERS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_in_order_without_ours_comments_or_junk() {
        let text =
            "# generated\nsearch example.com\nnameserver 169.254.1.1\nnameserver 10.0.0.53 # x\n\
                    nameserver fe80::1%eth0\nnameserver junk\nnameserver 2001:db8::53\n\
                    nameserver 10.0.0.53\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n";
        let own = ["169.254.1.1".parse().unwrap()];
        let s = nameservers(text, &own);
        assert_eq!(
            s,
            [
                "10.0.0.53".parse::<IpAddr>().unwrap(),
                "2001:db8::53".parse().unwrap(),
                "1.1.1.1".parse().unwrap()
            ]
        );
        assert!(nameservers("", &own).is_empty());
    }
}

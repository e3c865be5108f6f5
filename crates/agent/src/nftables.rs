//! Keeps weft's nftables state in step with the kernel (docs/dataplane.md, "Connections
//! that others translate" and "Restarts, leaving and joining"): every
//! `TRANSLATED_REFRESH_SECS` the agent checks that its tables are still there (a flushed
//! ruleset, as `systemctl restart nftables` leaves it, is written again), lists the host's
//! tracked connections and enters the client socket of every translated one into the set
//! `translated` again, so a Service or hostPort connection that idles longer than the
//! set's timeout keeps its replies tracked. The listing is shared with the fast path,
//! which refreshes its own map from it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weft_dataplane::stateful::{Conn, TRANSLATED_REFRESH_SECS};

use crate::Agent;

/// A listing of the conntrack table at most this old serves another refresh (the fast
/// path's map and the set are refreshed on the same ticks, the map first).
pub(crate) const SHARED_LISTING: Duration = Duration::from_secs(2);

/// The state in the owner task.
#[derive(Default)]
pub(crate) struct NftState {
    /// When the tables were last checked and the set refreshed (or tried).
    refreshed: Option<Instant>,
    /// The last listing of the conntrack table, and when it was taken.
    listing: Option<(Instant, Arc<Vec<Conn>>)>,
    /// How many sockets the last successful refresh entered.
    entered: Option<usize>,
    /// How often a table of weft's was found gone and written again.
    restored: u64,
    /// Why the last check or refresh failed.
    error: Option<String>,
}

/// `GET /status` part: weft's nftables tables and the refresh of the set of translated
/// connections' client sockets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NftablesReport {
    /// Client sockets of translated connections (to pods) conntrack knew at the last
    /// successful refresh, all entered into the set `translated` (none yet: `None`).
    #[serde(default)]
    pub translated_sockets: Option<usize>,
    /// Seconds between refreshes (and checks of the tables).
    pub every_secs: u64,
    /// How often since the agent started a table of weft's (`ip weft`, `ip6 weft`,
    /// `inet weft_policy`) was found gone (someone flushed the ruleset) and written again.
    #[serde(default)]
    pub restored: u64,
    /// Why the last check or refresh failed.
    pub error: Option<String>,
}

impl Agent {
    /// The host namespace's tracked connections: a listing taken within `max_age`, or a new
    /// one (`Duration::ZERO`: always new).
    pub(crate) fn conntrack_listing(
        &mut self,
        max_age: Duration,
    ) -> Result<Arc<Vec<Conn>>, String> {
        if let Some((at, conns)) = &self.nft.listing {
            if !max_age.is_zero() && at.elapsed() <= max_age {
                return Ok(conns.clone());
            }
        }
        let conns = Arc::new(crate::dataplane::conntrack_table()?);
        self.nft.listing = Some((Instant::now(), conns.clone()));
        Ok(conns)
    }

    /// Whether this tick refreshes the translated connections' client sockets (the set's
    /// here, the fast path's map in `fast_tick`, which runs first in the same tick and
    /// takes the listing this one then reuses).
    pub(crate) fn nftables_refresh_due(&self) -> bool {
        self.nft
            .refreshed
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(TRANSLATED_REFRESH_SECS))
    }

    /// Called on every tick: when due, checks weft's tables and refreshes the set (if
    /// weft's tables in the kernel are those the current pools, NAT and policy say).
    pub(crate) fn nftables_tick(&mut self) {
        if !self.nftables_refresh_due() {
            // A listing serves only the tick it was taken in (it may be large).
            self.nft.listing = None;
            return;
        }
        self.nft.refreshed = Some(Instant::now());
        // Each on its own: a failed check does not keep the set from its refresh.
        let res = match (self.nftables_check(), self.translated_refresh()) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        };
        self.nft.listing = None;
        match res {
            Ok(()) => {
                if self.nft.error.take().is_some() {
                    tracing::info!(target: "weft::dataplane", "nftables: in step again");
                }
            }
            Err(e) => {
                // Logged when it starts (a message may carry a changing count); `weft
                // status` shows the latest.
                if self.nft.error.is_none() {
                    tracing::warn!(target: "weft::dataplane", "{e}");
                }
                self.nft.error = Some(e);
            }
        }
    }

    /// Writes weft's tables again where one is gone; each table is checked even when
    /// another's check failed.
    fn nftables_check(&mut self) -> Result<(), String> {
        let weft = self
            .dp_tables_restore()
            .map_err(|e| format!("checking weft's nftables tables: {e}"));
        // Tables of weft's written again lost the policy's elements of their `isolated`
        // sets: the policy is written again too.
        let rewritten = weft.as_ref().is_ok_and(|n| *n > 0);
        let policy = self
            .policy_table_check(rewritten)
            .map_err(|e| format!("checking the policy's nftables table: {e}"));
        self.nft.restored += weft.as_ref().map_or(0, |n| *n) + policy.as_ref().map_or(0, |n| *n);
        match (weft, policy) {
            (Ok(_), Ok(_)) => Ok(()),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        }
    }

    /// Enters the client sockets of the translated connections conntrack knows into the
    /// set again (straight over netlink: `nft` would read the whole ruleset every time).
    fn translated_refresh(&mut self) -> Result<(), String> {
        use weft_dataplane::stateful::{refresh_sockets, translated_timeout_secs, NFT_TABLE};
        use weft_netlink::netfilter::{
            nft_add_socket_elements, SocketElement, NFPROTO_IPV4, NFPROTO_IPV6,
        };
        if !self.dp_tables_current() {
            return Ok(());
        }
        let (nat, policy) = (self.dp.cfg.nat, self.policy_active());
        let pools = self.cfg.ipam.space.pools.clone();
        let entered = self.conntrack_listing(SHARED_LISTING).and_then(|conns| {
            let sockets = refresh_sockets(&conns, &pools, nat, policy);
            // Each family even when the other's failed; the first error is reported.
            let mut first_err = None;
            for (v6, family) in [(false, NFPROTO_IPV4), (true, NFPROTO_IPV6)] {
                let elems: Vec<SocketElement> = sockets
                    .iter()
                    .filter(|(a, _, _)| a.is_ipv6() == v6)
                    .map(|&(addr, proto, port)| SocketElement {
                        addr,
                        proto,
                        port,
                        timeout_ms: translated_timeout_secs(proto) * 1000,
                    })
                    .collect();
                if !elems.is_empty() {
                    if let Err(e) = nft_add_socket_elements(family, NFT_TABLE, "translated", &elems)
                    {
                        first_err.get_or_insert(e.to_string());
                    }
                }
            }
            first_err.map_or(Ok(sockets.len()), Err)
        });
        let entered = entered.map_err(|e| {
            format!("refreshing the set of translated connections' client sockets: {e}")
        })?;
        self.nft.entered = Some(entered);
        Ok(())
    }

    /// `weft status`'s part; `None` when weft has no tables (no NAT, no policy).
    pub(crate) fn nftables_report(&self) -> Option<NftablesReport> {
        (self.dp.cfg.mode.is_some() && (self.dp.cfg.nat || self.policy_active())).then(|| {
            NftablesReport {
                translated_sockets: self.nft.entered,
                every_secs: TRANSLATED_REFRESH_SECS,
                restored: self.nft.restored,
                error: self.nft.error.clone(),
            }
        })
    }
}

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
use weft_dataplane::stateful::{refresh_script, Conn, TRANSLATED_REFRESH_SECS};

use crate::Agent;

/// A listing of the conntrack table at most this old serves another refresh (the fast
/// path's and the set's fall due on the same tick).
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
    /// refresh, all entered into the set `translated` (none yet: `None`).
    pub translated_sockets: Option<usize>,
    /// Seconds between refreshes (and checks of the tables).
    pub every_secs: u64,
    /// How often since the agent started a table of weft's (`ip weft`, `ip6 weft`,
    /// `inet weft_policy`) was found gone (someone flushed the ruleset) and written again.
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

    /// Called on every tick: when due, checks weft's tables and refreshes the set (if
    /// weft's tables in the kernel are those the current pools, NAT and policy say).
    pub(crate) fn nftables_tick(&mut self) {
        let due = self
            .nft
            .refreshed
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(TRANSLATED_REFRESH_SECS));
        if !due {
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
                if self.nft.error.as_ref() != Some(&e) {
                    tracing::warn!(target: "weft::dataplane", "{e}");
                }
                self.nft.error = Some(e);
            }
        }
    }

    /// Writes weft's tables again where one is gone.
    fn nftables_check(&mut self) -> Result<(), String> {
        let weft = self
            .dp_tables_restore()
            .map_err(|e| format!("checking weft's nftables tables: {e}"))?;
        let policy = self
            .policy_table_check(weft > 0)
            .map_err(|e| format!("checking the policy's nftables table: {e}"))?;
        self.nft.restored += weft + policy;
        Ok(())
    }

    /// Enters the client sockets of the translated connections conntrack knows into the
    /// set again.
    fn translated_refresh(&mut self) -> Result<(), String> {
        if !self.dp_tables_current() {
            return Ok(());
        }
        let (nat, policy) = (self.dp.cfg.nat, self.policy_active());
        let pools = self.cfg.ipam.space.pools.clone();
        let entered = self.conntrack_listing(SHARED_LISTING).and_then(|conns| {
            let (script, entered) = refresh_script(&conns, &pools, nat, policy);
            if !script.is_empty() {
                crate::dataplane::run_nft(&script)?;
            }
            Ok(entered)
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

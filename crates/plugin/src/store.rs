//! Where container addresses come from, behind [`AddressSource`].
//!
//! - [`AgentSource`] (the network config has no `range`): the weft agent on this host hands
//!   out addresses from the cluster's pools over its local API (`agentSocket`).
//! - [`LocalFileSource`] (standalone, with a `range`): the allocation table of one network
//!   lives in `DATA_DIR/networks/NAME/alloc.json`, changed only under an exclusive `flock` on
//!   `alloc.lock` and replaced atomically (write to a temporary file, then exchange it
//!   with the table: `renameat2(RENAME_EXCHANGE)`), so concurrent plugin invocations never
//!   hand out one address twice and a crash mid-write never leaves a torn file.
//!
//!   Why an exchange and not a rename over the table: on ext4 a rename that
//!   replaces a file starts the writeback of the new one at once (`auto_da_alloc`), and
//!   that cost every ADD and DEL about 150 µs at the median and 400 µs at p99 on a lab
//!   host whose `/run` and `/var/lib` are ext4 (docs/benchmarks.md, CNI). Nothing is
//!   `fsync`ed either way, so a power failure may lose the last seconds of changes; after
//!   an exchange it may leave the table empty (zero bytes: its data not yet written back),
//!   which is read as an empty table. Containers do not outlive a power failure, so no
//!   address they held is in use afterwards; the runtime's DEL and GC of the old ones find
//!   nothing to release.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use weft_agent::api::{self, ClientError};

use weft_alloc::{AllocError, AllocTable, Owner, Range};
use weft_cni::{code, CniError};

/// What an allocation gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocated {
    /// The addresses of the owner, one of every family the source serves, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// Whether the owner held every one of them before this call: then undoing the call
    /// must not release them.
    pub held_before: bool,
}

/// A source of container addresses.
pub trait AddressSource {
    /// Allocates the addresses of `owner` (one of every family the source serves, IPv4
    /// first), or returns those it already holds; in one step, so that an ADD costs the
    /// source one request however busy it is.
    fn allocate(&mut self, owner: &Owner) -> Result<Allocated, CniError>;
    /// Releases what `owner` holds; empty if it held nothing.
    fn release(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, CniError>;
    /// The addresses `owner` holds (empty: none).
    fn lookup(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, CniError>;
    /// Every current allocation.
    fn list(&mut self) -> Result<Vec<(IpAddr, Owner)>, CniError>;
    /// How many addresses are still free.
    fn free(&mut self) -> Result<u128, CniError>;
    /// The container MTU the source's data plane asks for, learnt with the last
    /// allocation; `None` when it has no say (the plugin then detects one).
    fn mtu(&self) -> Option<u32> {
        None
    }
    /// The name service the containers should use (the agent's), learnt with the last
    /// allocation.
    fn dns(&self) -> Option<weft_cni::Dns> {
        None
    }
    /// Releases every allocation whose owner is not in `valid`; returns the addresses.
    fn gc(&mut self, valid: &BTreeSet<Owner>) -> Result<Vec<IpAddr>, CniError> {
        let mut freed = Vec::new();
        for (_, owner) in self.list()? {
            if !valid.contains(&owner) {
                freed.extend(self.release(&owner)?);
            }
        }
        Ok(freed)
    }
}

/// The host-local, file-backed address source.
pub struct LocalFileSource {
    dir: PathBuf,
    range: Range,
}

impl LocalFileSource {
    /// The source for network `name` under `data_dir`, allocating from `range`.
    pub fn new(data_dir: &Path, name: &str, range: Range) -> Self {
        LocalFileSource {
            dir: data_dir.join("networks").join(name),
            range,
        }
    }

    /// Runs `f` on the table under the lock; writes the table back if `f` changed it.
    fn with_table<T>(
        &mut self,
        write: bool,
        f: impl FnOnce(&mut AllocTable) -> Result<T, CniError>,
    ) -> Result<T, CniError> {
        fs::create_dir_all(&self.dir).map_err(|e| io_err(&self.dir, "create directory", e))?;
        let lock_path = self.dir.join("alloc.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, "open", e))?;
        flock_exclusive(&lock).map_err(|e| io_err(&lock_path, "lock", e))?;
        let path = self.dir.join("alloc.json");
        let mut table = match fs::read(&path) {
            // Only a power failure leaves it empty (see the module's doc).
            Ok(bytes) if bytes.is_empty() => AllocTable::new(self.range.clone()),
            Ok(bytes) => {
                let mut t: AllocTable = serde_json::from_slice(&bytes).map_err(|e| {
                    CniError::new(
                        code::IO_FAILURE,
                        format!(
                            "allocation file {} is damaged: {e}; move it away to start afresh",
                            path.display()
                        ),
                    )
                })?;
                t.check().map_err(|e| {
                    CniError::new(
                        code::IO_FAILURE,
                        format!("allocation file {} is inconsistent: {e}", path.display()),
                    )
                })?;
                // The configured range may have changed: keep what still fits.
                let _outside = t.rebase(self.range.clone());
                t
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                AllocTable::new(self.range.clone())
            }
            Err(e) => return Err(io_err(&path, "read", e)),
        };
        let out = f(&mut table)?;
        if write {
            let tmp = self
                .dir
                .join(format!("alloc.json.tmp.{}", std::process::id()));
            let bytes = serde_json::to_vec_pretty(&table)
                .map_err(|e| CniError::new(code::INTERNAL, e.to_string()))?;
            let mut file = File::create(&tmp).map_err(|e| io_err(&tmp, "create", e))?;
            file.write_all(&bytes)
                .map_err(|e| io_err(&tmp, "write", e))?;
            drop(file);
            replace(&tmp, &path).map_err(|e| io_err(&path, "replace", e))?;
        }
        drop(lock); // releases the flock
        Ok(out)
    }
}

impl AddressSource for LocalFileSource {
    fn allocate(&mut self, owner: &Owner) -> Result<Allocated, CniError> {
        self.with_table(true, |t| {
            let held_before = t.lookup(owner).is_some();
            t.allocate(owner.clone())
                .map(|a| Allocated {
                    ips: vec![a],
                    held_before,
                })
                .map_err(|e| match e {
                    AllocError::Exhausted { .. } => {
                        CniError::new(code::ADDRESS_EXHAUSTED, format!("cannot allocate: {e}"))
                    }
                    other => CniError::new(code::INTERNAL, other.to_string()),
                })
        })
    }

    fn release(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
        self.with_table(true, |t| Ok(t.release(owner).into_iter().collect()))
    }

    fn lookup(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
        self.with_table(false, |t| Ok(t.lookup(owner).into_iter().collect()))
    }

    fn list(&mut self) -> Result<Vec<(IpAddr, Owner)>, CniError> {
        self.with_table(false, |t| {
            Ok(t.entries().map(|(ip, o)| (*ip, o.clone())).collect())
        })
    }

    fn free(&mut self) -> Result<u128, CniError> {
        self.with_table(false, |t| Ok(t.free()))
    }
}

/// Cluster addresses from the weft agent on this host, over its API socket.
pub struct AgentSource {
    socket: PathBuf,
    mtu: Option<u32>,
    dns: Option<weft_cni::Dns>,
    /// Who the attachment is: sent with the allocation, so that the agent registers the
    /// endpoint (and isolates it, if a policy says so) before it answers.
    identity: Option<weft_policy::identity::Identity>,
}

/// Longest answer wait of the calls that do not allocate.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct AddressAnswer {
    address: Option<IpAddr>,
    /// Every address (one per family; agents before dual stack sent `address` only).
    #[serde(default)]
    addresses: Option<Vec<IpAddr>>,
    /// The container MTU the agent's data plane allows (allocate answers only).
    #[serde(default)]
    mtu: Option<u32>,
    /// The agent's name service: nameservers and search domains (allocate answers of
    /// an agent serving DNS only).
    #[serde(default)]
    dns: Option<weft_cni::Dns>,
    /// What the owner held before the call (allocate answers). Agents before it was sent
    /// leave it out; then every address counts as held, so that an undo never frees an
    /// address in use (a leak the next GC takes back is the lesser harm).
    #[serde(default)]
    held: Option<Vec<IpAddr>>,
}

#[derive(Deserialize)]
struct ListAnswer {
    allocations: Vec<ListEntry>,
}

#[derive(Deserialize)]
struct ListEntry {
    address: IpAddr,
    container_id: String,
    ifname: String,
}

#[derive(Deserialize)]
struct GcAnswer {
    released: Vec<IpAddr>,
}

#[derive(Deserialize)]
struct ReportAnswer {
    not_ready: Option<String>,
    usable: u64,
    used: u64,
}

impl AgentSource {
    /// The source served by the agent at `socket`.
    pub fn new(socket: &Path) -> Self {
        AgentSource {
            socket: socket.to_path_buf(),
            mtu: None,
            dns: None,
            identity: None,
        }
    }

    /// The source that registers the allocated attachment as this endpoint.
    pub fn with_identity(mut self, identity: weft_policy::identity::Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// One request; non-200 answers become CNI errors (503: try again later, 507:
    /// exhausted), and so does an agent that does not answer.
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<T, CniError> {
        let body = body.map(|b| b.to_string());
        let (status, text) = api::call(&self.socket, method, path, body.as_deref(), timeout)
            .map_err(|e| match e {
                ClientError::Unreachable {
                    ref socket,
                    ref why,
                } => CniError::new(
                    code::TRY_AGAIN,
                    format!(
                        "cannot reach the weft agent at {socket} ({why}): `weft agent` must be \
                         running on this host to hand out cluster addresses (the network config \
                         has no \"range\"; \"agentSocket\" names the agent's socket)"
                    ),
                ),
                ClientError::TimedOut { .. } => CniError::new(code::TRY_AGAIN, e.to_string()),
                ClientError::Failed(msg) => CniError::new(
                    code::TRY_AGAIN,
                    format!("the weft agent at {}: {msg}", self.socket.display()),
                ),
            })?;
        let msg = || {
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or_else(|| text.clone())
        };
        match status {
            200 => serde_json::from_str(&text).map_err(|e| {
                CniError::new(
                    code::INTERNAL,
                    format!("the weft agent's answer to {path} is not understood: {e}"),
                )
            }),
            503 => Err(CniError::new(code::TRY_AGAIN, msg())),
            507 => Err(CniError::new(
                code::ADDRESS_EXHAUSTED,
                format!("cannot allocate: {}", msg()),
            )),
            404 => Err(CniError::new(
                code::INTERNAL,
                format!(
                    "the weft agent at {} does not serve {path} ({}): is it an older weft?",
                    self.socket.display(),
                    msg()
                ),
            )),
            _ => Err(CniError::new(
                code::INTERNAL,
                format!("the weft agent refused {path}: {}", msg()),
            )),
        }
    }

    fn owner_json(owner: &Owner) -> serde_json::Value {
        serde_json::json!({ "container_id": owner.container_id, "ifname": owner.ifname })
    }
}

impl AddressAnswer {
    /// Every address of the answer, IPv4 first.
    fn all(self) -> Vec<IpAddr> {
        let mut v = self
            .addresses
            .unwrap_or_else(|| self.address.into_iter().collect());
        v.sort_by_key(|a| a.is_ipv6());
        v
    }
}

impl AddressSource for AgentSource {
    fn mtu(&self) -> Option<u32> {
        self.mtu
    }

    fn dns(&self) -> Option<weft_cni::Dns> {
        self.dns.clone()
    }

    fn allocate(&mut self, owner: &Owner) -> Result<Allocated, CniError> {
        let mut body = Self::owner_json(owner);
        if let Some(id) = &self.identity {
            body["endpoint"] = serde_json::to_value(id).unwrap_or_default();
        }
        let a: AddressAnswer = self.call(
            "POST",
            "/ipam/allocate",
            Some(body),
            api::ALLOCATE_CLIENT_TIMEOUT,
        )?;
        self.mtu = a.mtu.filter(|m| (576..=65535).contains(m));
        self.dns = a.dns.clone();
        let held = a.held.clone();
        let all = a.all();
        if all.is_empty() {
            return Err(CniError::new(
                code::INTERNAL,
                "the weft agent allocated no address",
            ));
        }
        Ok(Allocated {
            held_before: held.is_none_or(|h| all.iter().all(|ip| h.contains(ip))),
            ips: all,
        })
    }

    fn release(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
        let a: AddressAnswer = self.call(
            "POST",
            "/ipam/release",
            Some(Self::owner_json(owner)),
            AGENT_TIMEOUT,
        )?;
        Ok(a.all())
    }

    fn lookup(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, CniError> {
        let a: AddressAnswer = self.call(
            "POST",
            "/ipam/lookup",
            Some(Self::owner_json(owner)),
            AGENT_TIMEOUT,
        )?;
        Ok(a.all())
    }

    fn list(&mut self) -> Result<Vec<(IpAddr, Owner)>, CniError> {
        let l: ListAnswer = self.call("GET", "/ipam/list", None, AGENT_TIMEOUT)?;
        Ok(l.allocations
            .into_iter()
            .map(|e| (e.address, Owner::new(e.container_id, e.ifname)))
            .collect())
    }

    /// Free addresses of the cluster's pools, as far as this node knows; an error when the
    /// agent is unreachable or its IPAM is not ready.
    fn free(&mut self) -> Result<u128, CniError> {
        let r: ReportAnswer = self.call("GET", "/ipam", None, AGENT_TIMEOUT)?;
        if let Some(why) = r.not_ready {
            return Err(CniError::new(
                code::TRY_AGAIN,
                format!("the cluster IPAM of the weft agent is not ready: {why}"),
            ));
        }
        Ok(u128::from(r.usable.saturating_sub(r.used)))
    }

    fn gc(&mut self, valid: &BTreeSet<Owner>) -> Result<Vec<IpAddr>, CniError> {
        let valid: Vec<serde_json::Value> = valid.iter().map(Self::owner_json).collect();
        let g: GcAnswer = self.call(
            "POST",
            "/ipam/gc",
            Some(serde_json::json!({ "valid": valid })),
            AGENT_TIMEOUT,
        )?;
        Ok(g.released)
    }
}

/// Makes `tmp` the file at `path` in one step, and removes `tmp`: an exchange of the two
/// names, then `tmp` (now the old table) unlinked (see the module's doc); a plain rename
/// where there is nothing to exchange with yet, or where the file system cannot exchange.
fn replace(tmp: &Path, path: &Path) -> std::io::Result<()> {
    use nix::errno::Errno;
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    match renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => {
            // The table is replaced: an old copy that cannot be removed is no reason to
            // fail the call that replaced it.
            let _ = fs::remove_file(tmp);
            Ok(())
        }
        Err(Errno::ENOENT | Errno::EINVAL | Errno::ENOSYS) => fs::rename(tmp, path),
        Err(e) => {
            let _ = fs::remove_file(tmp);
            Err(e.into())
        }
    }
}

fn flock_exclusive(file: &File) -> std::io::Result<()> {
    loop {
        // SAFETY: `file` is an open descriptor owned by the caller for the whole call; flock
        // only takes an advisory lock on it.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> CniError {
    CniError::new(code::IO_FAILURE, format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    fn sock_path(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("weft-plugin-{tag}-{}.sock", std::process::id()));
        let _ = fs::remove_file(&p);
        p
    }

    /// A one-shot server answering one request with `status` and `body`.
    fn answer_once(path: &Path, status: u16, body: &'static str) -> std::thread::JoinHandle<()> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let msg = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(msg.as_bytes()).unwrap();
        })
    }

    #[test]
    fn an_absent_agent_is_try_again_and_names_the_socket() {
        let p = sock_path("absent");
        let mut src = AgentSource::new(&p);
        let e = src.allocate(&Owner::new("c", "eth0")).unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN);
        assert!(e.msg.contains(&p.display().to_string()), "{}", e.msg);
        assert!(e.msg.contains("`weft agent` must be"), "{}", e.msg);
        let e = src.free().unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN);
    }

    #[test]
    fn agent_refusals_map_to_cni_codes() {
        for (status, body, want) in [
            (
                507,
                r#"{"error":"no free address"}"#,
                code::ADDRESS_EXHAUSTED,
            ),
            (
                503,
                r#"{"error":"cluster IPAM is not ready: x"}"#,
                code::TRY_AGAIN,
            ),
            (500, r#"{"error":"cannot save"}"#, code::INTERNAL),
        ] {
            let p = sock_path(&format!("refuse{status}"));
            let t = answer_once(&p, status, body);
            let e = AgentSource::new(&p)
                .allocate(&Owner::new("c", "eth0"))
                .unwrap_err();
            t.join().unwrap();
            assert_eq!(e.code, want, "{status}: {}", e.msg);
            let text: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(e.msg.contains(text["error"].as_str().unwrap()), "{}", e.msg);
            let _ = fs::remove_file(&p);
        }
        // STATUS fails while the agent's IPAM is not ready.
        let p = sock_path("notready");
        let t = answer_once(
            &p,
            200,
            r#"{"not_ready":"waiting for the heir","usable":254,"used":3}"#,
        );
        let e = AgentSource::new(&p).free().unwrap_err();
        t.join().unwrap();
        assert!(e.msg.contains("waiting for the heir"), "{}", e.msg);
        let _ = fs::remove_file(&p);
    }

    #[test]
    fn an_allocation_says_whether_the_owner_held_its_addresses_before() {
        for (body, held_before) in [
            (
                r#"{"address":"10.1.0.5","addresses":["10.1.0.5","fd00::5"],"held":[]}"#,
                false,
            ),
            (
                r#"{"address":"10.1.0.5","addresses":["fd00::5","10.1.0.5"],"held":["10.1.0.5"]}"#,
                false,
            ),
            (
                r#"{"address":"10.1.0.5","addresses":["fd00::5","10.1.0.5"],"held":["fd00::5","10.1.0.5"]}"#,
                true,
            ),
            // An agent that does not say: every address counts as held, never freed.
            (r#"{"address":"10.1.0.5"}"#, true),
        ] {
            let p = sock_path("held");
            let t = answer_once(&p, 200, body);
            let a = AgentSource::new(&p)
                .allocate(&Owner::new("c", "eth0"))
                .unwrap();
            t.join().unwrap();
            assert_eq!(a.held_before, held_before, "{body}");
            assert!(a.ips[0].is_ipv4(), "IPv4 first: {:?}", a.ips);
            let _ = fs::remove_file(&p);
        }
        // The file-backed source: the second allocation of one owner finds it held.
        let dir = std::env::temp_dir().join(format!("weft-plugin-held-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let range = Range::new("10.9.0.0/29".parse().unwrap(), None, None).unwrap();
        let mut src = LocalFileSource::new(&dir, "n", range);
        let owner = Owner::new("c", "eth0");
        let first = src.allocate(&owner).unwrap();
        let again = src.allocate(&owner).unwrap();
        assert!(!first.held_before);
        assert!(again.held_before);
        assert_eq!(first.ips, again.ips);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_table_is_replaced_in_one_step_and_only_an_empty_one_is_read_as_empty() {
        let dir = std::env::temp_dir().join(format!("weft-plugin-replace-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let range = Range::new("10.9.0.0/29".parse().unwrap(), None, None).unwrap();
        let mut src = LocalFileSource::new(&dir, "n", range);
        let (a, b) = (Owner::new("a", "eth0"), Owner::new("b", "eth0"));
        // The first write renames (nothing to exchange with), the next ones exchange.
        let first = src.allocate(&a).unwrap().ips;
        let second = src.allocate(&b).unwrap().ips;
        assert_ne!(first, second);
        let table = dir.join("networks/n");
        let mut names: Vec<String> = fs::read_dir(&table)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["alloc.json", "alloc.lock"],
            "no temporary file is left"
        );
        assert_eq!(src.lookup(&a).unwrap(), first);
        assert_eq!(src.release(&a).unwrap(), first);
        assert_eq!(src.lookup(&b).unwrap(), second);
        // What a power failure may leave after an exchange: an empty file, an empty table.
        fs::write(table.join("alloc.json"), b"").unwrap();
        assert_eq!(src.list().unwrap(), vec![]);
        assert_eq!(
            src.allocate(&b).unwrap().ips,
            first,
            "the lowest address again"
        );
        // Anything else that does not parse is still refused, not read as empty.
        fs::write(table.join("alloc.json"), b"\0\0\0").unwrap();
        let e = src.lookup(&b).unwrap_err();
        assert!(e.msg.contains("damaged"), "{}", e.msg);
        let _ = fs::remove_dir_all(&dir);
    }
}

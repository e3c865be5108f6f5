//! What the agent keeps in its data dir: its identity (`identity.json`, mode 0600, made on
//! first start), its own mesh records with their version counter (`mesh.json`) and the
//! cluster IPAM's state (`ipam.json`, mode 0600), all replaced atomically.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use weft_mesh::Persisted;
use weft_wire::Identity;

use crate::AgentError;

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| AgentError(format!("write {}: {e}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| AgentError(format!("write {}: {e}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(|e| AgentError(format!("write {}: {e}", path.display())))
}

fn ensure_dir(dir: &Path) -> Result<(), AgentError> {
    fs::create_dir_all(dir).map_err(|e| AgentError(format!("create {}: {e}", dir.display())))?;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    Ok(())
}

/// The identity in `dir`, made and saved on first start.
pub(crate) fn load_or_create_identity(dir: &Path) -> Result<Identity, AgentError> {
    ensure_dir(dir)?;
    let path = dir.join("identity.json");
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            AgentError(format!(
                "{} is damaged ({e}); move it away to start as a new node",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Identity::generate().map_err(|e| AgentError(e.to_string()))?;
            write_private(&path, &serde_json::to_vec_pretty(&id).expect("json"))?;
            Ok(id)
        }
        Err(e) => Err(AgentError(format!("read {}: {e}", path.display()))),
    }
}

/// This node's own records and version counter, if saved before.
pub(crate) fn load_persisted(dir: &Path) -> Result<Option<Persisted>, AgentError> {
    let path = dir.join("mesh.json");
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AgentError(format!("{} is damaged: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError(format!("read {}: {e}", path.display()))),
    }
}

/// Saves this node's own records and version counter.
pub(crate) fn save_persisted(dir: &Path, p: &Persisted) -> Result<(), AgentError> {
    write_private(
        &dir.join("mesh.json"),
        &serde_json::to_vec(p).expect("json"),
    )
}

/// The file that keeps the state of the IPAM engine whose records start with `prefix`:
/// `ipam.json` (the first family's engine), `ipam6.json` (IPv6 beside IPv4).
pub(crate) fn ipam_file(prefix: &str) -> &'static str {
    if prefix == weft_ipam::view::PREFIX6 {
        "ipam6.json"
    } else {
        "ipam.json"
    }
}

/// The state of the cluster IPAM engine with record prefix `prefix` (see [`ipam_file`]), if
/// saved before. A damaged file stops the agent: starting empty would forget which
/// addresses are in use.
pub(crate) fn load_ipam(
    dir: &Path,
    prefix: &str,
) -> Result<Option<weft_ipam::Persist>, AgentError> {
    let path = dir.join(ipam_file(prefix));
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            AgentError(format!(
                "{} is damaged ({e}); it holds this node's address allocations: restore it, or \
                 move it away and remove this node from the cluster (`weft rmpeer` on another \
                 node) before starting it as a new member",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError(format!("read {}: {e}", path.display()))),
    }
}

/// Saves the state of the cluster IPAM engine with record prefix `prefix` (mode 0600,
/// replaced atomically).
pub(crate) fn save_ipam(
    dir: &Path,
    prefix: &str,
    p: &weft_ipam::Persist,
) -> Result<(), AgentError> {
    write_private(
        &dir.join(ipam_file(prefix)),
        &serde_json::to_vec(p).expect("json"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_alloc::Owner;
    use weft_ipam::{Ipam, IpamConfig, Space};
    use weft_mesh::{NodeId, Store};

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("weft-agent-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn engine(id: NodeId, persisted: Option<weft_ipam::Persist>) -> Ipam {
        let cfg = IpamConfig {
            space: Space::new(vec!["10.99.0.0/24".parse().unwrap()], 28, 122).unwrap(),
            init: 1,
            grace_ms: 60_000,
            reclaim_after_ms: 0,
            request_timeout_ms: 2_000,
        };
        Ipam::new(id, cfg, persisted)
    }

    #[test]
    fn ipam_state_survives_a_save_and_a_load() {
        let dir = tmpdir("ipam-roundtrip");
        assert!(
            load_ipam(&dir, "ipam/").unwrap().is_none(),
            "no file: a fresh node"
        );
        let id = NodeId([7; 16]);
        let mut ipam = engine(id, None);
        let live = |_: &NodeId| true;
        ipam.step(&Store::new(), &live, 0);
        let owner = Owner::new("c1", "eth0");
        let a = ipam.allocate(&owner).expect("a lone init-1 node allocates");
        save_ipam(&dir, "ipam/", ipam.persist()).unwrap();
        let mode = fs::metadata(dir.join("ipam.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = load_ipam(&dir, "ipam/").unwrap().expect("saved");
        assert_eq!(&back, ipam.persist());
        let again = engine(id, Some(back));
        assert_eq!(again.lookup(&owner), Some(a));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_ipam_file_stops_the_start() {
        let dir = tmpdir("ipam-damaged");
        fs::write(dir.join("ipam.json"), b"{\"inc\": 3, \"view\": [").unwrap();
        let e = load_ipam(&dir, "ipam/").unwrap_err();
        assert!(e.0.contains("ipam.json is damaged"), "{}", e.0);
        let _ = fs::remove_dir_all(&dir);
    }
}

//! What the agent keeps in its data dir: its identity (`identity.json`, mode 0600, made on
//! first start), its own mesh records with their version counter (`mesh.json`) and the
//! cluster IPAM's state (`ipam.json`, mode 0600), all replaced atomically.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::Serialize;
use weft_mesh::{Persisted, RecordRef};
use weft_wire::Identity;

use crate::AgentError;

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
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

fn load_part(path: &Path) -> Result<Option<Persisted>, AgentError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AgentError(format!("{} is damaged: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError(format!("read {}: {e}", path.display()))),
    }
}

/// This node's own records and version counter, if saved before (`mesh.json` and
/// `objects.json`; the counter is at least every record's version).
pub(crate) fn load_persisted(dir: &Path) -> Result<Option<Persisted>, AgentError> {
    let main = load_part(&dir.join("mesh.json"))?;
    let objects = load_part(&dir.join("objects.json"))?;
    let mut p = match (main, objects) {
        (None, None) => return Ok(None),
        (Some(p), None) | (None, Some(p)) => p,
        (Some(mut p), Some(o)) => {
            p.counter = p.counter.max(o.counter);
            // A record kept in both (saved before the split) counts once, its newer copy.
            for r in o.records {
                match p.records.iter_mut().find(|x| x.key == r.key) {
                    Some(x) if x.version >= r.version => {}
                    Some(x) => *x = r,
                    None => p.records.push(r),
                }
            }
            p
        }
    };
    p.counter = p
        .records
        .iter()
        .map(|r| r.version)
        .fold(p.counter, u64::max);
    Ok(Some(p))
}

/// Own records whose keys start with this go to `objects.json`: cluster objects (policies
/// and namespaces, perhaps a thousand of them) change rarely, and the records that change
/// with every container (`mesh.json`) should not pay for writing them each time.
const OBJECTS_PREFIX: &str = "k8s/";

/// What identifies the objects' part of the own records: their number and highest
/// version (every write takes a new version, so any change changes it).
pub(crate) fn objects_mark(records: &[RecordRef<'_>]) -> (usize, u64) {
    records
        .iter()
        .filter(|r| r.key.starts_with(OBJECTS_PREFIX))
        .fold((0, 0), |(n, v), r| (n + 1, v.max(r.version)))
}

/// What `mesh.json` and `objects.json` hold: a `Persisted` of borrowed records.
#[derive(Serialize)]
struct PersistedRef<'a> {
    counter: u64,
    records: Vec<RecordRef<'a>>,
}

/// Saves this node's own records and version counter: the objects' part in
/// `objects.json` when it changed since `saved` (then `saved` is updated), written before
/// the rest in `mesh.json`. Records are serialized where they are, not copied (a host
/// that wrote a thousand policies saves at every ADD).
pub(crate) fn save_persisted(
    dir: &Path,
    counter: u64,
    records: &[RecordRef<'_>],
    saved: &mut Option<(usize, u64)>,
) -> Result<(), AgentError> {
    let mark = objects_mark(records);
    if *saved != Some(mark) {
        let part = PersistedRef {
            counter,
            records: records
                .iter()
                .filter(|r| r.key.starts_with(OBJECTS_PREFIX))
                .copied()
                .collect(),
        };
        write_private(
            &dir.join("objects.json"),
            &serde_json::to_vec(&part).expect("json"),
        )?;
        *saved = Some(mark);
    }
    let main = PersistedRef {
        counter,
        records: records
            .iter()
            .filter(|r| !r.key.starts_with(OBJECTS_PREFIX))
            .copied()
            .collect(),
    };
    write_private(
        &dir.join("mesh.json"),
        &serde_json::to_vec(&main).expect("json"),
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
    fn own_records_survive_split_in_two_files_and_objects_are_written_only_when_changed() {
        use weft_mesh::Record;
        let dir = tmpdir("persisted-split");
        let id = NodeId([9; 16]);
        let rec = |key: &str, version: u64| Record {
            owner: id,
            key: key.into(),
            version,
            value: Some(b"v".to_vec()),
        };
        let p = Persisted {
            counter: 7,
            records: vec![rec("name", 1), rec("k8s/np/x/a", 5), rec("ep/c/eth0", 7)],
        };
        let mut saved = None;
        let refs: Vec<RecordRef> = p.records.iter().map(Record::as_ref).collect();
        save_persisted(&dir, p.counter, &refs, &mut saved).unwrap();
        assert!(saved.is_some());
        let back = load_persisted(&dir).unwrap().unwrap();
        assert_eq!(back.counter, 7);
        let mut keys: Vec<&str> = back.records.iter().map(|r| r.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, vec!["ep/c/eth0", "k8s/np/x/a", "name"]);
        // An unchanged objects part is not written again.
        fs::remove_file(dir.join("objects.json")).unwrap();
        save_persisted(&dir, p.counter, &refs, &mut saved).unwrap();
        assert!(!dir.join("objects.json").exists());
        // A crash between the two writes: the counter still covers the objects' versions.
        let newer = Persisted {
            counter: 9,
            records: vec![rec("k8s/np/x/a", 9)],
        };
        fs::write(
            dir.join("objects.json"),
            serde_json::to_vec(&newer).unwrap(),
        )
        .unwrap();
        let back = load_persisted(&dir).unwrap().unwrap();
        assert_eq!(back.counter, 9);
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

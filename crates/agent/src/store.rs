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

/// The cluster IPAM's state (`ipam.json`), if saved before. A damaged file stops the agent:
/// starting empty would forget which addresses are in use.
pub(crate) fn load_ipam(dir: &Path) -> Result<Option<weft_ipam::Persist>, AgentError> {
    let path = dir.join("ipam.json");
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

/// Saves the cluster IPAM's state (mode 0600, replaced atomically).
pub(crate) fn save_ipam(dir: &Path, p: &weft_ipam::Persist) -> Result<(), AgentError> {
    write_private(
        &dir.join("ipam.json"),
        &serde_json::to_vec(p).expect("json"),
    )
}

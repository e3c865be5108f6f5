//! Where container addresses come from, behind [`AddressSource`].
//!
//! For now a host-local source: the allocation table of one network lives in
//! `DATA_DIR/networks/NAME/alloc.json`, changed only under an exclusive `flock` on
//! `alloc.lock` and replaced atomically (write to a temporary file, then rename), so
//! concurrent plugin invocations never hand out one address twice and a crash mid-write
//! never leaves a torn file. The cluster-wide IPAM replaces this source later.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use weft_alloc::{AllocError, AllocTable, Owner, Range};
use weft_cni::{code, CniError};

/// A source of container addresses.
pub trait AddressSource {
    /// Allocates an address for `owner`, or returns the one it already holds.
    fn allocate(&mut self, owner: &Owner) -> Result<IpAddr, CniError>;
    /// Releases what `owner` holds; `None` if it held nothing.
    fn release(&mut self, owner: &Owner) -> Result<Option<IpAddr>, CniError>;
    /// The address `owner` holds, if any.
    fn lookup(&mut self, owner: &Owner) -> Result<Option<IpAddr>, CniError>;
    /// Every current allocation.
    fn list(&mut self) -> Result<Vec<(IpAddr, Owner)>, CniError>;
    /// How many addresses are still free.
    fn free(&mut self) -> Result<u128, CniError>;
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
            fs::rename(&tmp, &path).map_err(|e| io_err(&path, "replace", e))?;
        }
        drop(lock); // releases the flock
        Ok(out)
    }
}

impl AddressSource for LocalFileSource {
    fn allocate(&mut self, owner: &Owner) -> Result<IpAddr, CniError> {
        self.with_table(true, |t| {
            t.allocate(owner.clone()).map_err(|e| match e {
                AllocError::Exhausted { .. } => {
                    CniError::new(code::ADDRESS_EXHAUSTED, format!("cannot allocate: {e}"))
                }
                other => CniError::new(code::INTERNAL, other.to_string()),
            })
        })
    }

    fn release(&mut self, owner: &Owner) -> Result<Option<IpAddr>, CniError> {
        self.with_table(true, |t| Ok(t.release(owner)))
    }

    fn lookup(&mut self, owner: &Owner) -> Result<Option<IpAddr>, CniError> {
        self.with_table(false, |t| Ok(t.lookup(owner)))
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

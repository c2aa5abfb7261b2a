//! Registries of live handles: a pointer handed to C is only a key, looked up under a lock
//! before use, so NULL, freed and foreign pointers are refused instead of dereferenced, and a
//! handle freed on one thread while another uses it stays alive until that use ends.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use super::{FfiError, FfiResult, MurmurStatus};

/// Live handles of one type, keyed by the address of their `Arc` allocation.
pub(crate) struct Registry<T> {
    what: &'static str,
    live: Mutex<Option<HashMap<usize, Arc<T>>>>,
}

impl<T> Registry<T> {
    pub(crate) const fn new(what: &'static str) -> Self {
        Registry {
            what,
            live: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<HashMap<usize, Arc<T>>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `v` and returns the pointer that stands for it.
    pub(crate) fn insert(&self, v: T) -> *mut T {
        let arc = Arc::new(v);
        let p = Arc::as_ptr(&arc) as *mut T;
        self.lock()
            .get_or_insert_with(HashMap::new)
            .insert(p as usize, arc);
        p
    }

    fn missing(&self) -> FfiError {
        FfiError::new(
            MurmurStatus::MurmurErrInvalidHandle,
            format!(
                "the {} handle is not live: it was already freed, or not created by murmur",
                self.what
            ),
        )
    }

    /// The object behind a live handle.
    pub(crate) fn get(&self, p: *const T) -> FfiResult<Arc<T>> {
        if p.is_null() {
            return Err(FfiError::null(&format!("the {} handle", self.what)));
        }
        self.lock()
            .as_ref()
            .and_then(|m| m.get(&(p as usize)).cloned())
            .ok_or_else(|| self.missing())
    }

    /// Unregisters a live handle; the object is dropped when its last user is done.
    pub(crate) fn remove(&self, p: *const T) -> FfiResult<Arc<T>> {
        if p.is_null() {
            return Err(FfiError::null(&format!("the {} handle", self.what)));
        }
        let mut live = self.lock();
        let found = live.as_mut().and_then(|m| m.remove(&(p as usize)));
        if live.as_ref().is_some_and(|m| m.is_empty()) {
            // Nothing left: release the table, so a program that freed every handle ends
            // with no allocation of the registry left behind.
            *live = None;
        }
        found.ok_or_else(|| self.missing())
    }
}

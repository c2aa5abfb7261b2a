//! `MurmurConfig`: the builder of a swarm, option by option.

use std::{
    ffi::c_char,
    net::SocketAddr,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use super::{
    guard, guard_or, handles::Registry, str_arg, FfiError, FfiResult, MurmurStatus,
    MURMUR_SWARM_KEY_LEN,
};
use crate::{Durability, RelayMode, SwarmBuilder};

/// Options for opening a swarm (an opaque builder). Create it with `murmur_config_new`, set
/// options with the `murmur_config_set_*` functions, pass it to `murmur_open` (which copies
/// it: one config can open several swarms) and free it with `murmur_config_free`.
/// Safe to use from several threads at once.
pub struct MurmurConfig {
    builder: Mutex<SwarmBuilder>,
}

pub(crate) static CONFIGS: Registry<MurmurConfig> = Registry::new("MurmurConfig");

impl MurmurConfig {
    fn lock(&self) -> MutexGuard<'_, SwarmBuilder> {
        self.builder.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the builder, for `murmur_open`.
    pub(crate) fn builder(&self) -> SwarmBuilder {
        self.lock().clone()
    }
}

/// Which relay servers help peers behind NATs reach each other
/// (for `murmur_config_set_relay_mode`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MurmurRelayMode {
    /// iroh's public relay servers (the default; needs the internet).
    MurmurRelayDefault = 0,
    /// No relays: direct connections only.
    MurmurRelayDisabled = 1,
    /// Your own relay server, by URL.
    MurmurRelayCustom = 2,
}

/// How durable an acknowledged write is (for `murmur_config_set_durability`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MurmurDurability {
    /// A write that returned survives power loss (the default).
    MurmurDurabilityFull = 0,
    /// A write that returned survives a crash of the process, not of the machine.
    MurmurDurabilityProcess = 1,
}

/// Applies one builder method to a live config.
fn update(
    config: *mut MurmurConfig,
    f: impl FnOnce(SwarmBuilder) -> FfiResult<SwarmBuilder>,
) -> MurmurStatus {
    guard(|| {
        let cfg = CONFIGS.get(config)?;
        let mut b = cfg.lock();
        let next = f(b.clone())?;
        *b = next;
        Ok(())
    })
}

fn config_err(msg: String) -> FfiError {
    FfiError::new(MurmurStatus::MurmurErrConfig, msg)
}

/// A new config with the defaults: storage path "./murmur_data", swarm name
/// "murmur-default-swarm", no bootstrap peers, bind address 0.0.0.0:0, default relays, local
/// discovery on, heartbeat 2000 ms, leader timeout 5000 ms, full durability, values up to
/// 1 MiB, 64 peers, clocks at most 60000 ms off. Returns NULL only if the library failed
/// internally.
#[no_mangle]
pub extern "C" fn murmur_config_new() -> *mut MurmurConfig {
    guard_or(std::ptr::null_mut(), || {
        CONFIGS.insert(MurmurConfig {
            builder: Mutex::new(SwarmBuilder::default()),
        })
    })
}

/// Frees a config. NULL is ignored (MURMUR_OK); a config already freed gives
/// MURMUR_ERR_INVALID_HANDLE.
///
/// # Safety
/// `config` is NULL or a pointer returned by `murmur_config_new`.
#[no_mangle]
pub unsafe extern "C" fn murmur_config_free(config: *mut MurmurConfig) -> MurmurStatus {
    guard(|| {
        if !config.is_null() {
            CONFIGS.remove(config)?;
        }
        Ok(())
    })
}

/// Sets the data directory (SQLite database, node key). One process at a time per directory.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn murmur_config_set_storage_path(
    config: *mut MurmurConfig,
    path: *const c_char,
) -> MurmurStatus {
    update(config, |b| {
        // SAFETY: per the function's contract.
        let path = unsafe { str_arg(path, "path") }?;
        Ok(b.storage_path(path))
    })
}

/// Sets the secret shared by the members of the swarm: `len` must be `MURMUR_SWARM_KEY_LEN`
/// (32). Peers that cannot prove they hold it are refused before any data flows.
///
/// # Safety
/// `key` is NULL or points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn murmur_config_set_swarm_key(
    config: *mut MurmurConfig,
    key: *const u8,
    len: usize,
) -> MurmurStatus {
    update(config, |b| {
        if key.is_null() {
            return Err(FfiError::null("key"));
        }
        if len != MURMUR_SWARM_KEY_LEN {
            return Err(config_err(format!(
                "a swarm key is {MURMUR_SWARM_KEY_LEN} bytes, not {len}"
            )));
        }
        let mut k = [0u8; MURMUR_SWARM_KEY_LEN];
        // SAFETY: `key` points to 32 readable bytes per the contract.
        k.copy_from_slice(unsafe { std::slice::from_raw_parts(key, len) });
        Ok(b.swarm_key(k))
    })
}

/// Derives the swarm key from a name: an open swarm that anyone who knows the name may join.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn murmur_config_set_swarm_name(
    config: *mut MurmurConfig,
    name: *const c_char,
) -> MurmurStatus {
    update(config, |b| {
        // SAFETY: per the function's contract.
        let name = unsafe { str_arg(name, "name") }?;
        Ok(b.swarm_name(name))
    })
}

/// Adds a peer to join through: a ticket from `murmur_ticket`, `<node-id>@<ip>:<port>`, or a
/// bare node ID. Can be called several times. The peer is parsed by `murmur_open`
/// (MURMUR_ERR_INVALID_TICKET there).
///
/// # Safety
/// `peer` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn murmur_config_add_bootstrap(
    config: *mut MurmurConfig,
    peer: *const c_char,
) -> MurmurStatus {
    update(config, |b| {
        // SAFETY: per the function's contract.
        let peer = unsafe { str_arg(peer, "peer") }?;
        Ok(b.bootstrap([peer.to_string()]))
    })
}

/// Sets the local UDP socket address, for example "127.0.0.1:0" or "[::]:4433"
/// (MURMUR_ERR_CONFIG if it does not parse).
///
/// # Safety
/// `addr` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn murmur_config_set_bind_addr(
    config: *mut MurmurConfig,
    addr: *const c_char,
) -> MurmurStatus {
    update(config, |b| {
        // SAFETY: per the function's contract.
        let addr = unsafe { str_arg(addr, "addr") }?;
        let parsed: SocketAddr = addr
            .parse()
            .map_err(|e| config_err(format!("bind address {addr:?}: {e}")))?;
        Ok(b.bind_addr(parsed))
    })
}

/// Sets the relay mode, a `MurmurRelayMode` value. `custom_url` is the relay URL for
/// MURMUR_RELAY_CUSTOM and is ignored (may be NULL) otherwise. An unknown mode gives
/// MURMUR_ERR_CONFIG.
///
/// # Safety
/// `custom_url` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn murmur_config_set_relay_mode(
    config: *mut MurmurConfig,
    mode: i32,
    custom_url: *const c_char,
) -> MurmurStatus {
    update(config, |b| {
        let mode = match mode {
            m if m == MurmurRelayMode::MurmurRelayDefault as i32 => RelayMode::Default,
            m if m == MurmurRelayMode::MurmurRelayDisabled as i32 => RelayMode::Disabled,
            m if m == MurmurRelayMode::MurmurRelayCustom as i32 => {
                // SAFETY: per the function's contract.
                let url = unsafe { str_arg(custom_url, "custom_url") }?;
                RelayMode::Custom(url.to_string())
            }
            m => return Err(config_err(format!("unknown relay mode {m}"))),
        };
        Ok(b.relay_mode(mode))
    })
}

/// Turns mDNS discovery on the LAN on or off.
///
/// # Safety
/// `config` is NULL or a pointer returned by `murmur_config_new`.
#[no_mangle]
pub unsafe extern "C" fn murmur_config_set_local_discovery(
    config: *mut MurmurConfig,
    enabled: bool,
) -> MurmurStatus {
    update(config, |b| Ok(b.local_discovery(enabled)))
}

/// Sets how often the leader sends heartbeats, in milliseconds (checked by `murmur_open`).
///
/// # Safety
/// `config` is NULL or a pointer returned by `murmur_config_new`.
#[no_mangle]
pub unsafe extern "C" fn murmur_config_set_heartbeat_ms(
    config: *mut MurmurConfig,
    ms: u64,
) -> MurmurStatus {
    update(config, |b| {
        Ok(b.heartbeat_interval(Duration::from_millis(ms)))
    })
}

/// Sets the silence after which the leader is presumed gone, in milliseconds; it must exceed
/// the heartbeat (checked by `murmur_open`).
///
/// # Safety
/// `config` is NULL or a pointer returned by `murmur_config_new`.
#[no_mangle]
pub unsafe extern "C" fn murmur_config_set_leader_timeout_ms(
    config: *mut MurmurConfig,
    ms: u64,
) -> MurmurStatus {
    update(config, |b| Ok(b.leader_timeout(Duration::from_millis(ms))))
}

/// Sets the durability, a `MurmurDurability` value (MURMUR_ERR_CONFIG if unknown).
///
/// # Safety
/// `config` is NULL or a pointer returned by `murmur_config_new`.
#[no_mangle]
pub unsafe extern "C" fn murmur_config_set_durability(
    config: *mut MurmurConfig,
    durability: i32,
) -> MurmurStatus {
    update(config, |b| {
        let d = match durability {
            d if d == MurmurDurability::MurmurDurabilityFull as i32 => Durability::Full,
            d if d == MurmurDurability::MurmurDurabilityProcess as i32 => Durability::Process,
            d => return Err(config_err(format!("unknown durability {d}"))),
        };
        Ok(b.durability(d))
    })
}

/// Sets the largest value in bytes, at most `MURMUR_MAX_VALUE_SIZE_LIMIT` (checked by
/// `murmur_open`).
///
/// # Safety
/// `config` is NULL or a pointer returned by `murmur_config_new`.
#[no_mangle]
pub unsafe extern "C" fn murmur_config_set_max_value_size(
    config: *mut MurmurConfig,
    bytes: usize,
) -> MurmurStatus {
    update(config, |b| Ok(b.max_value_size(bytes)))
}

/// Sets the largest number of peers of the full mesh (checked by `murmur_open`).
///
/// # Safety
/// `config` is NULL or a pointer returned by `murmur_config_new`.
#[no_mangle]
pub unsafe extern "C" fn murmur_config_set_max_peers(
    config: *mut MurmurConfig,
    peers: usize,
) -> MurmurStatus {
    update(config, |b| Ok(b.max_peers(peers)))
}

/// Sets the largest offset, in milliseconds, between this node's wall clock and the median of
/// its connected peers' clocks at which it still accepts writes (default 60000); beyond it
/// writes fail with MURMUR_ERR_CLOCK_SKEW. At least 1 (checked by `murmur_open`).
///
/// # Safety
/// `config` is NULL or a pointer returned by `murmur_config_new`.
#[no_mangle]
pub unsafe extern "C" fn murmur_config_set_max_clock_offset_ms(
    config: *mut MurmurConfig,
    ms: u64,
) -> MurmurStatus {
    update(
        config,
        |b| Ok(b.max_clock_offset(Duration::from_millis(ms))),
    )
}

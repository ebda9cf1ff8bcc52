//! The maps the programs share (names and layouts in `weft-ebpf-common`).

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, SockHash},
};
use weft_ebpf_common::{OriginalDst, PodCapture, TupleKey, UpstreamKey};

#[map(name = "WEFT_PODS")]
pub static ENROLLED: HashMap<u64, PodCapture> = HashMap::with_max_entries(16_384, 0);

/// Each captured socket's original destination, in the socket's own
/// storage from its connect until it is established (or closed): no shared
/// table one pod's churn could fill or evict another pod's entries from.
#[btf_map(name = "WEFT_ORIG_DST")]
pub static ORIGINAL_DST: SkStorage<OriginalDst> = SkStorage::new();

/// `ORIGINAL_DST` as a map argument of the storage helpers.
#[inline(always)]
pub fn original_dst_map() -> *mut core::ffi::c_void {
    core::ptr::from_ref(&ORIGINAL_DST).cast_mut().cast()
}

#[map(name = "WEFT_TUPLES")]
pub static TUPLES: LruHashMap<TupleKey, OriginalDst> = LruHashMap::with_max_entries(65_536, 0);

#[map(name = "WEFT_INBOUND")]
pub static INBOUND: SockHash<u32> = SockHash::with_max_entries(16_384, 0);

#[map(name = "WEFT_POD_IPS")]
pub static POD_IPS: HashMap<u32, u8> = HashMap::with_max_entries(16_384, 0);

#[map(name = "WEFT_EXCLUDED")]
pub static EXCLUDED_PORTS: HashMap<u32, u8> = HashMap::with_max_entries(1_024, 0);

#[map(name = "WEFT_UPSTREAMS")]
pub static UPSTREAMS: HashMap<UpstreamKey, u8> = HashMap::with_max_entries(65_536, 0);

/// Index 0: non-zero while ztunnel runs with `--bpf-log`.
#[map(name = "WEFT_DEBUG")]
pub static DEBUG: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the programs report what they decide (through aya-log).
#[inline(always)]
pub fn debug() -> bool {
    DEBUG.get(0).is_some_and(|on| *on != 0)
}

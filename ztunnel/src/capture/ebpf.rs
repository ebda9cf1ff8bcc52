//! Loader for Weft's kernel programs, and the maps that enroll pods.
//!
//! The object file is compiled from `ebpf/` by this crate's build script and
//! embedded in the binary, so the programs always match the loader.
//!
//! Restart safety: programs, maps and links are pinned under the pin
//! directory (`/sys/fs/bpf/weft` by default) together with a digest of the
//! object. A restarted ztunnel with the same object adopts them (it opens
//! the pinned maps and leaves the attached programs alone), so capture never
//! stops; while ztunnel is away, enrolled pods' connections go to a port
//! nothing listens on, and inbound plaintext is dropped — they fail, they
//! do not bypass the mesh. A ztunnel with a different object replaces them.
//! [`EbpfCapture::remove_pins`] takes everything out of the kernel.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, SockHash},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSockAddr, ProgramError, SkLookup, SockOps,
    },
    Ebpf, EbpfError as LoadError,
};
use weft_ebpf_common::{
    OriginalDst, PodCapture, TupleKey, UpstreamKey, AF_INET, AF_INET6, CONNECT4_PROGRAM,
    CONNECT6_PROGRAM, DEBUG_MAP, ENROLLED_PODS_MAP, EXCLUDED_PORTS_MAP, INBOUND_MAP,
    ORIGINAL_DST_MAP, POD_IPS_MAP, SK_LOOKUP_PROGRAM, SOCKOPS_PROGRAM, TUPLES_MAP, UPSTREAMS_MAP,
};

/// The object built from `ebpf/` for this checkout (see `build.rs`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft-ebpf.o"));

/// The compiled kernel programs, for tools that inspect them.
pub fn object() -> &'static [u8] {
    OBJECT
}

/// A network namespace, identified the way the kernel programs see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetnsCookie(pub u64);

/// What went wrong while loading, attaching or updating the programs.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "loading Weft's eBPF object into the kernel failed: {0}; check that the kernel has \
         BPF enabled and that ztunnel runs as root (or with CAP_BPF and CAP_NET_ADMIN)"
    )]
    Load(#[source] LoadError),
    #[error("the eBPF object has no {kind} `{name}`; it was built from a different source tree")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error(
        "the kernel refused program `{name}`: {source}; this kernel may lack the hook \
         (capture mode iptables works without it)"
    )]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pinning under {path}: {reason}; is bpffs mounted at /sys/fs/bpf?")]
    Pin { path: PathBuf, reason: String },
    #[error("eBPF map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "ztunnel's cgroup {ztunnel} is inside the pods' cgroup {pods}, so capture would take \
         ztunnel's own connections; run ztunnel outside the pods' cgroup"
    )]
    InsidePods { ztunnel: PathBuf, pods: PathBuf },
    #[error(
        "{dir} holds pins ztunnel did not make ({names}); refusing to remove it — check \
         --bpf-pin-dir, which must be a directory of ztunnel's own"
    )]
    ForeignPins { dir: PathBuf, names: String },
    #[error("reading the eBPF programs' log: {0}")]
    Log(String),
}

/// Where the programs attach and what they leave alone.
#[derive(Clone, Debug)]
pub struct EbpfOptions {
    /// Pins live here (one directory per ztunnel).
    pub pin_dir: PathBuf,
    /// The cgroup v2 directory holding the node's pods.
    pub pods_cgroup: PathBuf,
    /// ztunnel's own cgroup v2 directory: it must not be inside
    /// `pods_cgroup`, or ztunnel would capture itself.
    pub ztunnel_cgroup: PathBuf,
    /// Ports capture leaves alone, both ways.
    pub excluded_ports: Vec<u16>,
    /// Whether the programs report their decisions (`--bpf-log`).
    pub log: bool,
}

struct Maps {
    enrolled: HashMap<MapData, u64, PodCapture>,
    tuples: HashMap<MapData, TupleKey, OriginalDst>,
    inbound: SockHash<MapData, u32>,
    pod_ips: HashMap<MapData, u32, u8>,
    excluded: HashMap<MapData, u32, u8>,
    upstreams: HashMap<MapData, UpstreamKey, u8>,
    debug: Array<MapData, u32>,
}

/// Weft's capture programs, in the kernel and pinned.
pub struct EbpfCapture {
    pin_dir: PathBuf,
    maps: Maps,
    sk_lookup: SkLookup,
    /// sk_lookup attachments by pod network namespace.
    lookups: StdHashMap<u64, PinnedLink>,
    /// Which pod (network namespace) each inbound address entry is for:
    /// releasing a pod removes only its own entries, never those of
    /// another pod given the same address.
    owners: StdHashMap<u32, u64>,
    /// Whether this process loaded the programs (false: adopted them).
    pub loaded: bool,
}

impl std::fmt::Debug for EbpfCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfCapture")
            .field("pin_dir", &self.pin_dir)
            .field("loaded", &self.loaded)
            .finish_non_exhaustive()
    }
}

const PINNED_MAPS: [&str; 8] = [
    DEBUG_MAP,
    ENROLLED_PODS_MAP,
    ORIGINAL_DST_MAP,
    TUPLES_MAP,
    INBOUND_MAP,
    POD_IPS_MAP,
    EXCLUDED_PORTS_MAP,
    UPSTREAMS_MAP,
];
const LINKS: [&str; 3] = ["link-connect4", "link-connect6", "link-sockops"];
/// A short digest of the embedded object: pins from another object are not
/// adopted. bpffs holds no regular files, so the digest is the name of an
/// (empty) directory beside the pins: `object-<digest>`.
fn object_marker() -> String {
    format!("object-{}", object_digest())
}

fn object_digest() -> String {
    // FNV-1a: stable across builds and cheap; not a security boundary.
    let hash = OBJECT.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EbpfError {
    let path = path.to_owned();
    move |source| EbpfError::Io {
        action,
        path,
        source,
    }
}

fn program<'a, T>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    bpf.program_mut(name)
        .ok_or(EbpfError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| EbpfError::Program { name, source })
}

/// Pins an attachment's link at `path`, so it outlives this process.
fn pin_link<L>(link: L, path: &Path) -> Result<(), EbpfError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let pin_error = |reason: String| EbpfError::Pin {
        path: path.to_owned(),
        reason,
    };
    FdLink::try_from(link)
        .map_err(|e| pin_error(e.to_string()))?
        .pin(path)
        .map_err(|e| pin_error(e.to_string()))?;
    Ok(())
}

fn cgroup_dir(path: &Path) -> Result<File, EbpfError> {
    File::open(path).map_err(io_error("opening cgroup", path))
}

impl EbpfCapture {
    /// Adopts the pinned programs if they are this object's, else loads,
    /// attaches and pins them.
    pub fn start(options: &EbpfOptions) -> Result<Self, EbpfError> {
        if options.ztunnel_cgroup.starts_with(&options.pods_cgroup) {
            return Err(EbpfError::InsidePods {
                ztunnel: options.ztunnel_cgroup.clone(),
                pods: options.pods_cgroup.clone(),
            });
        }
        let dir = &options.pin_dir;
        let complete = PINNED_MAPS
            .iter()
            .all(|m| dir.join(format!("map-{m}")).exists())
            && LINKS.iter().all(|l| dir.join(l).exists())
            && dir.join("prog-sk-lookup").exists();
        let mut capture = if dir.join(object_marker()).is_dir() && complete {
            tracing::info!(pin_dir = %dir.display(), "adopting the pinned capture programs");
            Self::adopt(dir)?
        } else {
            if dir.exists() {
                tracing::info!(pin_dir = %dir.display(), "replacing capture programs of another build");
                Self::remove_pins(dir)?;
            }
            Self::load(options).inspect_err(|_| {
                // Nothing half-attached stays behind a failed start.
                let _ = Self::remove_pins(dir);
            })?
        };
        capture.set_excluded_ports(&options.excluded_ports)?;
        capture.set_log(options.log)?;
        Ok(capture)
    }

    fn load(options: &EbpfOptions) -> Result<Self, EbpfError> {
        let dir = &options.pin_dir;
        std::fs::create_dir_all(dir).map_err(io_error("creating pin directory", dir))?;
        let mut bpf = Ebpf::load(OBJECT).map_err(EbpfError::Load)?;
        let pods = cgroup_dir(&options.pods_cgroup)?;
        let pin_err = |path: &Path| {
            let path = path.to_owned();
            move |e: &dyn std::fmt::Display| EbpfError::Pin {
                path,
                reason: e.to_string(),
            }
        };
        for (name, link_name) in [
            (CONNECT4_PROGRAM, "link-connect4"),
            (CONNECT6_PROGRAM, "link-connect6"),
        ] {
            let p: &mut CgroupSockAddr = program(&mut bpf, name)?;
            p.load()
                .map_err(|source| EbpfError::Program { name, source })?;
            // Through a BPF link the attachment coexists with other programs
            // on the cgroup; the kernel refuses the explicit multi flag on
            // links, hence `Single` ("no flags").
            let id = p
                .attach(&pods, CgroupAttachMode::Single)
                .map_err(|source| EbpfError::Program { name, source })?;
            let link = p
                .take_link(id)
                .map_err(|source| EbpfError::Program { name, source })?;
            pin_link(link, &dir.join(link_name))?;
        }
        let sockops: &mut SockOps = program(&mut bpf, SOCKOPS_PROGRAM)?;
        sockops.load().map_err(|source| EbpfError::Program {
            name: SOCKOPS_PROGRAM,
            source,
        })?;
        let id = sockops
            .attach(&pods, CgroupAttachMode::Single)
            .map_err(|source| EbpfError::Program {
                name: SOCKOPS_PROGRAM,
                source,
            })?;
        let link = sockops.take_link(id).map_err(|source| EbpfError::Program {
            name: SOCKOPS_PROGRAM,
            source,
        })?;
        pin_link(link, &dir.join("link-sockops"))?;
        for name in PINNED_MAPS {
            let path = dir.join(format!("map-{name}"));
            bpf.map(name)
                .ok_or(EbpfError::Missing { kind: "map", name })?
                .pin(&path)
                .map_err(|e| pin_err(&path)(&e))?;
        }
        let lookup: &mut SkLookup = program(&mut bpf, SK_LOOKUP_PROGRAM)?;
        lookup.load().map_err(|source| EbpfError::Program {
            name: SK_LOOKUP_PROGRAM,
            source,
        })?;
        let path = dir.join("prog-sk-lookup");
        lookup.pin(&path).map_err(|e| pin_err(&path)(&e))?;
        let marker = dir.join(object_marker());
        std::fs::create_dir(&marker).map_err(io_error("creating", &marker))?;
        tracing::info!(pin_dir = %dir.display(), pods_cgroup = %options.pods_cgroup.display(), "eBPF capture programs loaded and attached");
        drop(bpf);
        let mut capture = Self::adopt(dir)?;
        capture.loaded = true;
        Ok(capture)
    }

    fn adopt(dir: &Path) -> Result<Self, EbpfError> {
        let open = |name: &'static str| -> Result<MapData, EbpfError> {
            MapData::from_pin(dir.join(format!("map-{name}")))
                .map_err(|source| EbpfError::Map { map: name, source })
        };
        let hash = |name: &'static str| -> Result<Map, EbpfError> { Ok(Map::HashMap(open(name)?)) };
        let lru =
            |name: &'static str| -> Result<Map, EbpfError> { Ok(Map::LruHashMap(open(name)?)) };
        let map_err = |map: &'static str| move |source| EbpfError::Map { map, source };
        let maps = Maps {
            enrolled: HashMap::try_from(hash(ENROLLED_PODS_MAP)?)
                .map_err(map_err(ENROLLED_PODS_MAP))?,
            tuples: HashMap::try_from(lru(TUPLES_MAP)?).map_err(map_err(TUPLES_MAP))?,
            inbound: SockHash::try_from(Map::SockHash(open(INBOUND_MAP)?))
                .map_err(map_err(INBOUND_MAP))?,
            pod_ips: HashMap::try_from(hash(POD_IPS_MAP)?).map_err(map_err(POD_IPS_MAP))?,
            excluded: HashMap::try_from(hash(EXCLUDED_PORTS_MAP)?)
                .map_err(map_err(EXCLUDED_PORTS_MAP))?,
            upstreams: HashMap::try_from(hash(UPSTREAMS_MAP)?).map_err(map_err(UPSTREAMS_MAP))?,
            debug: Array::try_from(Map::Array(open(DEBUG_MAP)?)).map_err(map_err(DEBUG_MAP))?,
        };
        let sk_lookup = SkLookup::from_pin(dir.join("prog-sk-lookup")).map_err(|source| {
            EbpfError::Program {
                name: SK_LOOKUP_PROGRAM,
                source,
            }
        })?;
        // Pods' sk_lookup attachments from before a restart.
        let mut lookups = StdHashMap::new();
        for entry in std::fs::read_dir(dir)
            .map_err(io_error("reading", dir))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(cookie) = name
                .strip_prefix("lookup-")
                .and_then(|c| c.parse::<u64>().ok())
            {
                if let Ok(link) = PinnedLink::from_pin(entry.path()) {
                    lookups.insert(cookie, link);
                }
            }
        }
        Ok(Self {
            pin_dir: dir.to_owned(),
            maps,
            sk_lookup,
            lookups,
            owners: StdHashMap::new(),
            loaded: false,
        })
    }

    fn set_excluded_ports(&mut self, ports: &[u16]) -> Result<(), EbpfError> {
        let map_err = |source| EbpfError::Map {
            map: EXCLUDED_PORTS_MAP,
            source,
        };
        let old: Vec<u32> = self.maps.excluded.keys().filter_map(Result::ok).collect();
        for port in old {
            self.maps.excluded.remove(&port).map_err(map_err)?;
        }
        for port in ports {
            self.maps
                .excluded
                .insert(u32::from(*port), 1, 0)
                .map_err(map_err)?;
        }
        Ok(())
    }

    /// Switches the programs' reports on or off (adopted programs too: the
    /// switch is a map).
    fn set_log(&mut self, on: bool) -> Result<(), EbpfError> {
        self.maps
            .debug
            .set(0, u32::from(on), 0)
            .map_err(|source| EbpfError::Map {
                map: DEBUG_MAP,
                source,
            })
    }

    /// Forwards the programs' reports (aya-log records) to ztunnel's log,
    /// target `weft_ebpf`, from a task of the current runtime.
    pub fn forward_log(&self) -> Result<(), EbpfError> {
        let id = self
            .sk_lookup
            .info()
            .map_err(|source| EbpfError::Program {
                name: SK_LOOKUP_PROGRAM,
                source,
            })?
            .id();
        // Every program of the object writes to the same ring buffer, so
        // any one program finds it.
        let logger =
            aya_log::EbpfLogger::init_from_id(id).map_err(|e| EbpfError::Log(e.to_string()))?;
        // SAFETY: the logger owns its ring buffer's descriptor and returns
        // that same descriptor for as long as it lives.
        let mut logger = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        }
        .map_err(|e| EbpfError::Log(e.to_string()))?;
        tokio::spawn(async move {
            while let Ok(mut ready) = logger.readable_mut().await {
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
        });
        Ok(())
    }

    /// Starts capturing a pod: outbound by its namespace cookie, inbound
    /// plaintext to `listener` for each of its IPv4 addresses.
    pub fn enroll(
        &mut self,
        netns: NetnsCookie,
        netns_fd: BorrowedFd<'_>,
        addresses: &[IpAddr],
        outbound_port: u16,
        listener: BorrowedFd<'_>,
    ) -> Result<(), EbpfError> {
        for ip in ipv4_keys(addresses) {
            self.owners.insert(ip, netns.0);
            self.maps
                .inbound
                .insert(ip, listener.as_raw_fd(), 0)
                .map_err(|source| EbpfError::Map {
                    map: INBOUND_MAP,
                    source,
                })?;
            self.maps
                .pod_ips
                .insert(ip, 1, 0)
                .map_err(|source| EbpfError::Map {
                    map: POD_IPS_MAP,
                    source,
                })?;
        }
        let own_ip4 = ipv4_keys(addresses).next().unwrap_or(0);
        if !self.lookups.contains_key(&netns.0) {
            let id = self
                .sk_lookup
                .attach(netns_fd)
                .map_err(|source| EbpfError::Program {
                    name: SK_LOOKUP_PROGRAM,
                    source,
                })?;
            let link = self
                .sk_lookup
                .take_link(id)
                .map_err(|source| EbpfError::Program {
                    name: SK_LOOKUP_PROGRAM,
                    source,
                })?;
            let path = self.pin_dir.join(format!("lookup-{}", netns.0));
            let pinned = FdLink::from(link).pin(&path).map_err(|e| EbpfError::Pin {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            self.lookups.insert(netns.0, pinned);
        }
        self.maps
            .enrolled
            .insert(netns.0, PodCapture::new(outbound_port, own_ip4), 0)
            .map_err(|source| EbpfError::Map {
                map: ENROLLED_PODS_MAP,
                source,
            })
    }

    /// Stops capturing new connections of the pod; established ones are
    /// untouched. Releasing a pod that is not enrolled is not an error.
    pub fn release(&mut self, netns: NetnsCookie, addresses: &[IpAddr]) -> Result<(), EbpfError> {
        let ignore_absent = |r: Result<(), MapError>, map| match r {
            Err(source) if !is_absent(&source) => Err(EbpfError::Map { map, source }),
            _ => Ok(()),
        };
        ignore_absent(self.maps.enrolled.remove(&netns.0), ENROLLED_PODS_MAP)?;
        for ip in ipv4_keys(addresses) {
            // Another pod's entry for the same address stays.
            if self.owners.get(&ip).is_some_and(|owner| *owner != netns.0) {
                continue;
            }
            self.owners.remove(&ip);
            self.remove_address(ip)?;
        }
        if let Some(link) = self.lookups.remove(&netns.0) {
            // Unpinned and dropped: the attachment goes with its last handle.
            drop(link.unpin());
        }
        Ok(())
    }

    fn remove_address(&mut self, ip: u32) -> Result<(), EbpfError> {
        let ignore_absent = |r: Result<(), MapError>, map| match r {
            Err(source) if !is_absent(&source) => Err(EbpfError::Map { map, source }),
            _ => Ok(()),
        };
        ignore_absent(self.maps.inbound.remove(&ip), INBOUND_MAP)?;
        ignore_absent(self.maps.pod_ips.remove(&ip), POD_IPS_MAP)
    }

    /// Releases every enrolled pod not in `keep` (after a restart, the
    /// node agent's snapshot says which pods are still there).
    pub fn retain(
        &mut self,
        keep: &HashSet<NetnsCookie>,
        addresses: &HashSet<IpAddr>,
    ) -> Result<(), EbpfError> {
        let stale: Vec<u64> = self
            .maps
            .enrolled
            .keys()
            .filter_map(Result::ok)
            .chain(self.lookups.keys().copied())
            .filter(|cookie| !keep.contains(&NetnsCookie(*cookie)))
            .collect();
        for cookie in stale {
            self.release(NetnsCookie(cookie), &[])?;
        }
        // Addresses no enrolled pod has are nobody's: their entries go.
        let stale_ips: Vec<u32> = self
            .maps
            .pod_ips
            .keys()
            .filter_map(Result::ok)
            .filter(|ip| !addresses.contains(&IpAddr::V4(Ipv4Addr::from(ip.to_ne_bytes()))))
            .collect();
        for ip in stale_ips {
            self.owners.remove(&ip);
            self.remove_address(ip)?;
        }
        Ok(())
    }

    /// Where a connection captured from the pod (`netns`) was headed: the
    /// accepted socket's peer is the application's socket address. The
    /// entry is taken out: each is read once, so none lingers for a later
    /// connection from the same address and port to find.
    pub fn original_dst(
        &mut self,
        netns: NetnsCookie,
        peer: SocketAddr,
    ) -> Result<Option<SocketAddr>, EbpfError> {
        let (family, ip) = match peer.ip() {
            IpAddr::V4(v4) => (AF_INET, [u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                (AF_INET6, [word(0), word(4), word(8), word(12)])
            }
        };
        let key = TupleKey {
            netns: netns.0,
            ip,
            port: u32::from(peer.port()),
            family,
        };
        match self.maps.tuples.get(&key, 0) {
            Ok(dst) => {
                let _ = self.maps.tuples.remove(&key);
                let (octets, len) = dst.octets();
                let ip = if len == 16 {
                    IpAddr::V6(Ipv6Addr::from(octets))
                } else {
                    IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
                };
                Ok(Some(SocketAddr::new(ip, dst.port as u16)))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(EbpfError::Map {
                map: TUPLES_MAP,
                source,
            }),
        }
    }

    /// Lets ztunnel's connection from `source` to the application at
    /// `app` through inbound capture (until [`EbpfCapture::end_upstream`]).
    pub fn pass_upstream(&mut self, app: SocketAddr, source: SocketAddr) -> Result<(), EbpfError> {
        match upstream_key(app, source) {
            Some(key) => self
                .maps
                .upstreams
                .insert(key, 1, 0)
                .map_err(|source| EbpfError::Map {
                    map: UPSTREAMS_MAP,
                    source,
                }),
            None => Ok(()),
        }
    }

    pub fn end_upstream(&mut self, app: SocketAddr, source: SocketAddr) {
        if let Some(key) = upstream_key(app, source) {
            let _ = self.maps.upstreams.remove(&key);
        }
    }

    /// How many attachments are in place (health, for metrics).
    pub fn attachments(&self) -> usize {
        LINKS
            .iter()
            .filter(|l| self.pin_dir.join(l).exists())
            .count()
            + self.lookups.len()
    }

    /// Detaches and unloads everything pinned under `dir` and removes it.
    /// A directory holding anything ztunnel did not pin (another tool's
    /// pins, a mistyped `--bpf-pin-dir` such as `/sys/fs/bpf` itself) is
    /// refused and left as it is.
    pub fn remove_pins(dir: &Path) -> Result<(), EbpfError> {
        if !dir.exists() {
            return Ok(());
        }
        let foreign: Vec<String> = std::fs::read_dir(dir)
            .map_err(io_error("reading", dir))?
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| !is_own_pin(name))
            .collect();
        if !foreign.is_empty() {
            return Err(EbpfError::ForeignPins {
                dir: dir.to_owned(),
                names: foreign.join(", "),
            });
        }
        std::fs::remove_dir_all(dir).map_err(io_error("removing pins", dir))
    }
}

/// Whether `name` is one of the entries ztunnel creates in its pin
/// directory.
fn is_own_pin(name: &str) -> bool {
    name.strip_prefix("map-")
        .is_some_and(|map| PINNED_MAPS.contains(&map) || map.starts_with("WEFT_"))
        || LINKS.contains(&name)
        || name == "prog-sk-lookup"
        || name
            .strip_prefix("lookup-")
            .is_some_and(|cookie| cookie.parse::<u64>().is_ok())
        || name.starts_with("object-")
}

/// The IPv4 addresses among `addresses`, as the maps key them (network
/// order in memory). The inbound maps are IPv4-only.
fn ipv4_keys(addresses: &[IpAddr]) -> impl Iterator<Item = u32> + '_ {
    addresses.iter().filter_map(|ip| match ip {
        IpAddr::V4(v4) => Some(u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(_) => None,
    })
}

/// Whether a map error only says the key was not there.
fn is_absent(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn upstream_key(app: SocketAddr, source: SocketAddr) -> Option<UpstreamKey> {
    match (app.ip(), source.ip()) {
        (IpAddr::V4(app_ip), IpAddr::V4(source_ip)) => Some(UpstreamKey {
            pod_ip: u32::from_ne_bytes(app_ip.octets()),
            source_ip: u32::from_ne_bytes(source_ip.octets()),
            source_port: u32::from(source.port()),
            pod_port: u32::from(app.port()),
        }),
        _ => None,
    }
}

/// `SO_NETNS_COOKIE` (Linux 5.14), not yet exported by every libc crate.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the network namespace `socket` lives in.
pub fn netns_cookie_of(socket: BorrowedFd<'_>) -> io::Result<NetnsCookie> {
    getsockopt_u64(socket, SO_NETNS_COOKIE).map(NetnsCookie)
}

/// The kernel's cookie for `socket`, as `bpf_get_socket_cookie` sees it.
pub fn socket_cookie_of(socket: BorrowedFd<'_>) -> io::Result<u64> {
    getsockopt_u64(socket, libc::SO_COOKIE)
}

fn getsockopt_u64(socket: BorrowedFd<'_>, option: libc::c_int) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given, and
    // the descriptor is borrowed for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_its_own_pins_and_refuses_a_directory_with_foreign_ones() {
        let ours = tempfile::tempdir().unwrap();
        for name in [
            "map-WEFT_PODS",
            "link-connect4",
            "prog-sk-lookup",
            "lookup-42",
        ] {
            std::fs::write(ours.path().join(name), b"").unwrap();
        }
        std::fs::create_dir(ours.path().join(object_marker())).unwrap();
        EbpfCapture::remove_pins(ours.path()).unwrap();
        assert!(!ours.path().exists());

        let shared = tempfile::tempdir().unwrap();
        std::fs::write(shared.path().join("map-WEFT_PODS"), b"").unwrap();
        std::fs::write(shared.path().join("cilium_calls"), b"").unwrap();
        let err = EbpfCapture::remove_pins(shared.path()).unwrap_err();
        assert!(err.to_string().contains("cilium_calls"), "{err}");
        assert!(shared.path().join("cilium_calls").exists());
        assert!(shared.path().join("map-WEFT_PODS").exists());
    }
}

//! Loader for Weft's kernel programs, and the maps that enroll pods.
//!
//! The object file is compiled from `ebpf/` by this crate's build script and
//! embedded in the binary, so the programs always match the loader. Programs
//! attach once per node, at the pods' parent cgroup; a pod is captured when
//! its network-namespace cookie is in the enrolled-pods map, so enrolling or
//! releasing a pod is a single map update that never disturbs other pods.

use std::{
    fs::File,
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData, MapError},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError},
    Ebpf, EbpfError,
};
use weft_ebpf_common::{
    OriginalDst, PodCapture, CONNECT4_PROGRAM, ENROLLED_PODS_MAP, ORIGINAL_DST_MAP,
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

/// What went wrong while loading, attaching or updating the capture programs.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "loading Weft's eBPF object into the kernel failed: {0}; check that the kernel has \
         BPF enabled and that ztunnel runs as root (or with CAP_BPF and CAP_NET_ADMIN)"
    )]
    Load(#[source] EbpfError),
    #[error("the eBPF object has no program `{0}`; it was built from a different source tree")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}`; it was built from a different source tree")]
    MissingMap(&'static str),
    #[error(
        "the kernel verifier rejected program `{name}`: {source}; this kernel may lack the \
         hook (use capture mode iptables)"
    )]
    Verify {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("opening cgroup {path} to attach capture: {source}; is cgroup v2 mounted there?")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attaching program `{name}` to cgroup {path} failed: {source}")]
    Attach {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("updating eBPF map `{map}` failed: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// Weft's capture programs, loaded into the kernel.
///
/// Dropping this detaches every program it attached and unloads them (the
/// restart-safe, pinned variant arrives with the eBPF capture work).
pub struct EbpfCapture {
    bpf: Ebpf,
    enrolled: HashMap<MapData, u64, PodCapture>,
    original_dst: HashMap<MapData, u64, OriginalDst>,
}

impl std::fmt::Debug for EbpfCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfCapture").finish_non_exhaustive()
    }
}

impl EbpfCapture {
    /// Loads the embedded object and passes every program through the
    /// verifier. Nothing is attached yet.
    pub fn load() -> Result<Self, CaptureError> {
        let mut bpf = Ebpf::load(OBJECT).map_err(CaptureError::Load)?;
        let program: &mut CgroupSockAddr = bpf
            .program_mut(CONNECT4_PROGRAM)
            .ok_or(CaptureError::MissingProgram(CONNECT4_PROGRAM))?
            .try_into()
            .map_err(|source| CaptureError::Verify {
                name: CONNECT4_PROGRAM,
                source,
            })?;
        program.load().map_err(|source| CaptureError::Verify {
            name: CONNECT4_PROGRAM,
            source,
        })?;
        let enrolled = take_map(&mut bpf, ENROLLED_PODS_MAP)?;
        let enrolled = HashMap::try_from(enrolled).map_err(|source| CaptureError::Map {
            map: ENROLLED_PODS_MAP,
            source,
        })?;
        let original_dst = take_map(&mut bpf, ORIGINAL_DST_MAP)?;
        let original_dst = HashMap::try_from(original_dst).map_err(|source| CaptureError::Map {
            map: ORIGINAL_DST_MAP,
            source,
        })?;
        Ok(Self {
            bpf,
            enrolled,
            original_dst,
        })
    }

    /// Attaches outbound capture to `cgroup` (a cgroup v2 directory holding
    /// the pods, never the host's root cgroup). Other programs already
    /// attached there keep running.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), CaptureError> {
        let dir = File::open(cgroup).map_err(|source| CaptureError::OpenCgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let program: &mut CgroupSockAddr = self
            .bpf
            .program_mut(CONNECT4_PROGRAM)
            .ok_or(CaptureError::MissingProgram(CONNECT4_PROGRAM))?
            .try_into()
            .map_err(|source| CaptureError::Verify {
                name: CONNECT4_PROGRAM,
                source,
            })?;
        // Through a BPF link (Linux 5.7+) the attachment always coexists
        // with other programs on the cgroup; the kernel refuses the explicit
        // multi flag on links, hence `Single`, which means "no flags".
        program
            .attach(dir, CgroupAttachMode::Single)
            .map_err(|source| CaptureError::Attach {
                name: CONNECT4_PROGRAM,
                path: cgroup.to_owned(),
                source,
            })?;
        tracing::info!(cgroup = %cgroup.display(), program = CONNECT4_PROGRAM, "attached outbound capture");
        Ok(())
    }

    /// Starts capturing the outbound TCP of the pod whose network namespace
    /// is `netns`, sending it to `outbound_port` on the pod's loopback.
    pub fn enroll(&mut self, netns: NetnsCookie, outbound_port: u16) -> Result<(), CaptureError> {
        self.enrolled
            .insert(netns.0, PodCapture::outbound_to(outbound_port), 0)
            .map_err(|source| CaptureError::Map {
                map: ENROLLED_PODS_MAP,
                source,
            })
    }

    /// Stops capturing new connections of the pod; established ones are
    /// untouched. Releasing a pod that is not enrolled is not an error.
    pub fn release(&mut self, netns: NetnsCookie) -> Result<(), CaptureError> {
        match self.enrolled.remove(&netns.0) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(CaptureError::Map {
                map: ENROLLED_PODS_MAP,
                source,
            }),
        }
    }

    /// Whether the pod is enrolled.
    pub fn is_enrolled(&self, netns: NetnsCookie) -> bool {
        self.enrolled.get(&netns.0, 0).is_ok()
    }

    /// The destination an application socket (by its cookie) asked for
    /// before capture rewrote it, if it was captured.
    pub fn original_dst(&self, socket_cookie: u64) -> Result<Option<SocketAddrV4>, CaptureError> {
        match self.original_dst.get(&socket_cookie, 0) {
            Ok(dst) => Ok(Some(SocketAddrV4::new(
                Ipv4Addr::from(dst.ip4_octets()),
                dst.port(),
            ))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(CaptureError::Map {
                map: ORIGINAL_DST_MAP,
                source,
            }),
        }
    }
}

fn take_map(bpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, CaptureError> {
    bpf.take_map(name).ok_or(CaptureError::MissingMap(name))
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

//! Network-namespace labs: namespaces a test makes itself, real fulcrum processes (and
//! other daemons) started in them, everything removed when the lab is dropped, also
//! when the test fails. Needs root; `Lab::new` says why when it cannot run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Bound for every wait in a lab: far above what any step takes.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Runs `ip` with `args`; the error names the command and says what `ip` said.
pub fn try_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip` with `args`; panics when it fails.
pub fn ip(args: &[&str]) {
    if let Err(e) = try_ip(args) {
        panic!("{e}");
    }
}

/// Says, past the test harness's capture of `println!`, why a test did not run.
pub fn skipped(why: &str) {
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

/// Runs `f` on a thread that has entered the network namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter(&path);
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) {
    let file = std::fs::File::open(path).expect("open the namespace");
    // SAFETY: setns(2) with a valid descriptor; it changes only the calling thread,
    // which is one the test made for that namespace.
    let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A plain HTTP/1.1 request; the status and body, or `None` on any failure.
pub fn request(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let body = if method == "POST" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{body}\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// A plain HTTP/1.1 GET.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    request(addr, "GET", path)
}

/// Namespaces, the processes started in them and a directory of files.
pub struct Lab {
    prefix: String,
    names: Vec<String>,
    pub dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Lab {
    /// Makes a namespace (loopback up) for each of `names`, or says why it cannot.
    /// `tag` keeps the namespaces of different tests apart.
    pub fn new(tag: &str, names: &[&str]) -> Result<Lab, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: network namespaces need CAP_SYS_ADMIN".into());
        }
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "{tag}{}x{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::SeqCst)
        );
        let probe = format!("{prefix}probe");
        let made = Command::new("ip")
            .args(["netns", "add", &probe])
            .output()
            .map_err(|e| format!("no ip command: {e}"))?;
        if !made.status.success() {
            return Err(format!(
                "ip netns add failed: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            ));
        }
        let _ = Command::new("ip").args(["netns", "del", &probe]).status();
        let dir = std::env::temp_dir().join(format!("fulcrum-lab-{prefix}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let lab = Lab {
            prefix,
            names: names.iter().map(|n| n.to_string()).collect(),
            dir,
            children: Vec::new(),
        };
        for n in names {
            try_ip(&["netns", "add", &lab.ns(n)])?;
            try_ip(&["-n", &lab.ns(n), "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// The full name of namespace `n`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `ip -n <n> args...`
    pub fn ip(&self, n: &str, args: &[&str]) -> Result<(), String> {
        let ns = self.ns(n);
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        try_ip(&all)
    }

    /// What `ip` prints for `args`, run in namespace `n`.
    pub fn ip_out(&self, n: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.ns(n)])
            .args(args)
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A veth pair from `a` to `b`, each end named and addressed, both up.
    pub fn link(
        &self,
        (a, a_dev, a_addr): (&str, &str, &str),
        (b, b_dev, b_addr): (&str, &str, &str),
    ) -> Result<(), String> {
        let nb = self.ns(b);
        self.ip(
            a,
            &[
                "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", &nb,
            ],
        )?;
        self.ip(a, &["addr", "add", a_addr, "dev", a_dev])?;
        self.ip(b, &["addr", "add", b_addr, "dev", b_dev])?;
        self.ip(a, &["link", "set", a_dev, "up"])?;
        self.ip(b, &["link", "set", b_dev, "up"])
    }

    /// The directory of namespace `n`'s files, created on first use.
    pub fn dir(&self, n: &str) -> PathBuf {
        let dir = self.dir.join(n);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `contents` to `file` in namespace `n`'s directory.
    pub fn write(&self, n: &str, file: &str, contents: &str) -> PathBuf {
        let path = self.dir(n).join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Starts `program args...` in namespace `n`, its output in the file `log` of
    /// `n`'s directory; `tag` names it for `kill` and `terminate`.
    pub fn spawn(
        &mut self,
        n: &str,
        tag: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir(n).join("log"))
            .unwrap();
        let out = log.try_clone().unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(n), program])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("FULCRUM_CONFIG")
            .current_dir(self.dir(n))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        self.children.push((tag.to_string(), child));
    }

    /// Starts `fulcrum run` with `config` in namespace `n` (tagged `n`).
    pub fn start(&mut self, n: &str, config: &str, rust_log: &str) {
        let path = self.write(n, "fulcrum.toml", config);
        let path = path.to_string_lossy().into_owned();
        self.spawn(
            n,
            n,
            env!("CARGO_BIN_EXE_fulcrum"),
            &["run", "-c", &path],
            &[("RUST_LOG", rust_log)],
        );
    }

    fn pid(&self, tag: &str) -> Option<i32> {
        let (_, child) = self.children.iter().find(|(name, _)| name == tag)?;
        i32::try_from(child.id()).ok()
    }

    /// SIGKILL to the process tagged `tag` (`ip netns exec` execs it: same PID).
    pub fn kill(&mut self, tag: &str) {
        if let Some(i) = self.children.iter().position(|(name, _)| name == tag) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Rewrites the config of namespace `n`'s fulcrum and sends it SIGHUP.
    pub fn reload(&self, n: &str, config: &str) {
        self.write(n, "fulcrum.toml", config);
        let pid = self.pid(n).expect("a running fulcrum");
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }

    /// Sends `signal` to the process tagged `tag` and returns at once.
    pub fn signal(&self, tag: &str, signal: i32) {
        if let Some(pid) = self.pid(tag) {
            // SAFETY: kill(2) on the PID of a child this test started and has not
            // reaped.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Sends SIGTERM to the process tagged `tag` and returns at once.
    pub fn signal_term(&self, tag: &str) {
        self.signal(tag, libc::SIGTERM);
    }

    /// Waits for the process tagged `tag` to exit (SIGKILL after `PATIENCE`).
    pub fn wait_exit(&mut self, tag: &str) -> Option<std::process::ExitStatus> {
        let i = self.children.iter().position(|(name, _)| name == tag)?;
        let (_, mut child) = self.children.remove(i);
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGTERM, and waits for the exit.
    pub fn terminate(&mut self, tag: &str) -> Option<std::process::ExitStatus> {
        self.signal_term(tag);
        self.wait_exit(tag)
    }

    pub fn log(&self, n: &str) -> String {
        std::fs::read_to_string(self.dir.join(n).join("log")).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for n in &self.names {
                let log = self.log(n);
                if !log.is_empty() {
                    eprintln!("---- log of {n} ----\n{log}");
                }
            }
        }
        for n in &self.names {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

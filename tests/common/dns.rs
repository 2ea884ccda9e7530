//! A DNS server on loopback UDP for the tests: answers A queries for the names it is
//! given (TTL 1 s), an empty answer for their other types, NXDOMAIN for the rest, and
//! counts the queries it gets. Records change while it runs.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

pub struct DnsServer {
    pub addr: SocketAddr,
    names: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// The question's name (lowercase, no final dot) and where the question ends.
fn question(msg: &[u8]) -> Option<(String, usize, u16)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(msg.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    Some((labels.join("."), at + 4, qtype))
}

fn answer(query: &[u8], names: &HashMap<String, Vec<Ipv4Addr>>) -> Option<Vec<u8>> {
    let (name, end, qtype) = question(query)?;
    let records = names.get(&name);
    let ips: &[Ipv4Addr] = match (records, qtype) {
        (Some(ips), 1) => ips,
        _ => &[],
    };
    let mut out = Vec::with_capacity(end + ips.len() * 16);
    out.extend_from_slice(&query[..2]);
    let rcode = if records.is_some() { 0 } else { 3 };
    out.extend_from_slice(&[0x81, 0x80 | rcode]);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(ips.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..end]);
    for ip in ips {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let names: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>> = Arc::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let (n, q) = (names.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let reply = answer(&buf[..len], &n.lock().unwrap());
                if let Some(reply) = reply {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        DnsServer {
            addr,
            names,
            queries,
            task,
        }
    }

    /// Sets the A records of `name` (an empty list: a name with no A records).
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        self.names
            .lock()
            .unwrap()
            .insert(name.to_string(), ips.to_vec());
    }

    /// Makes `name` unknown (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        self.names.lock().unwrap().remove(name);
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

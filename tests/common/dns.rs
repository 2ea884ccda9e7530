//! A DNS server on loopback UDP for the tests: answers A and SRV queries for the names
//! it is given (TTL 1 s), an empty answer for their other types, NXDOMAIN for the
//! rest, and counts the queries it gets. Records change while it runs.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// An SRV record: priority, weight, port, target.
pub type Srv = (u16, u16, u16, &'static str);

#[derive(Default)]
struct Zone {
    a: HashMap<String, Vec<Ipv4Addr>>,
    srv: HashMap<String, Vec<Srv>>,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// The question's name (lowercase, no final dot), where the question ends, its type.
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

fn answer(query: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    let (name, end, qtype) = question(query)?;
    let known = zone.a.contains_key(&name) || zone.srv.contains_key(&name);
    // Each answer's type and data.
    let mut answers: Vec<(u16, Vec<u8>)> = Vec::new();
    match qtype {
        1 => {
            for ip in zone.a.get(&name).into_iter().flatten() {
                answers.push((1, ip.octets().to_vec()));
            }
        }
        33 => {
            for (priority, weight, port, target) in zone.srv.get(&name).into_iter().flatten() {
                let mut data = Vec::new();
                for v in [priority, weight, port] {
                    data.extend_from_slice(&v.to_be_bytes());
                }
                for label in target.split('.') {
                    data.push(label.len() as u8);
                    data.extend_from_slice(label.as_bytes());
                }
                data.push(0);
                answers.push((33, data));
            }
        }
        _ => {}
    }
    let mut out = Vec::with_capacity(end + answers.len() * 32);
    out.extend_from_slice(&query[..2]);
    let rcode = if known { 0 } else { 3 };
    out.extend_from_slice(&[0x81, 0x80 | rcode]);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..end]);
    for (kind, data) in answers {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let (z, q) = (zone.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let reply = answer(&buf[..len], &z.lock().unwrap());
                if let Some(reply) = reply {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        DnsServer {
            addr,
            zone,
            queries,
            task,
        }
    }

    /// Sets the A records of `name` (an empty list: a name with no A records).
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        let mut zone = self.zone.lock().unwrap();
        zone.a.insert(name.to_string(), ips.to_vec());
    }

    /// Sets the SRV records of `name`.
    pub fn set_srv(&self, name: &str, records: &[Srv]) {
        let mut zone = self.zone.lock().unwrap();
        zone.srv.insert(name.to_string(), records.to_vec());
    }

    /// Makes `name` unknown (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        let mut zone = self.zone.lock().unwrap();
        zone.a.remove(name);
        zone.srv.remove(name);
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

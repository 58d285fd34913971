//! Shared test fixtures: an in-process smtpsink, default options, and a
//! scripted fake SMTP server for failure cases.
#![allow(dead_code)]

use smtpload::driver::{self, Options};
use smtpload::payload::{Payload, PayloadSpec};
use smtpload::report::Results;
use smtpsink::config::Config;
use smtpsink::proto::client::ClientSettings;
use smtpsink::reactor::{Background, Report, Server};
use smtpsink::sink::Verify;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// smtpsink with the verify sink, on an ephemeral loopback port.
pub struct Sink {
    pub addr: SocketAddr,
    server: Background<Verify>,
}

impl Sink {
    pub fn start() -> Self {
        let config = Config::default_for("127.0.0.1:0".parse().unwrap());
        let server = Server::from_config(&config, Verify::default())
            .expect("bind")
            .spawn();
        Self {
            addr: server.addrs[0],
            server,
        }
    }

    pub fn stop(self) -> Report<Verify> {
        self.server.stop().expect("run")
    }
}

pub fn spec() -> PayloadSpec {
    PayloadSpec {
        from: "load{n}@example.test".into(),
        to: "sink{r}@example.test".into(),
        recipients: 2,
        size: 2048,
        message: None,
        chunk: 0,
        run_id: 0x5eed,
    }
}

pub fn options(target: SocketAddr) -> Options {
    Options {
        target,
        connections: 4,
        messages: Some(200),
        duration: None,
        per_connection: 0,
        rate: None,
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(10),
        max_errors: None,
        client: ClientSettings {
            helo_name: "load.test".into(),
            ehlo: true,
            pipelining: true,
            bdat: false,
            window: 1,
        },
        progress: false,
    }
}

pub fn run(opts: &Options, payload: &Payload) -> Results {
    driver::run(opts, payload, None).expect("run")
}

/// What the fake server does.
#[derive(Debug, Clone, Copy)]
pub enum Script {
    /// Answer every RCPT with this code.
    RcptCode(u16),
    /// Answer every end of data with this code.
    FinalCode(u16),
    /// Close the connection after answering MAIL.
    DropAfterMail,
    /// Greet, answer EHLO, then never answer again.
    Stall,
    /// Delay the first final reply by this long, then answer normally.
    StallFirstFinal(Duration),
}

/// A blocking, thread-per-connection SMTP server that follows `script`.
pub fn fake_server(script: Script) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut first = true;
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let stall_final = match script {
                Script::StallFirstFinal(d) if first => Some(d),
                _ => None,
            };
            first = false;
            std::thread::spawn(move || {
                let _ = serve_fake(conn, script, stall_final);
            });
        }
    });
    addr
}

fn serve_fake(
    conn: TcpStream,
    script: Script,
    mut stall_final: Option<Duration>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    w.write_all(b"220 fake ESMTP\r\n")?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let verb = String::from_utf8_lossy(&line[..line.len().min(4)]).to_ascii_uppercase();
        if matches!(script, Script::Stall) && verb != "EHLO" {
            std::thread::sleep(Duration::from_secs(30));
            return Ok(());
        }
        let reply: String = match verb.as_str() {
            "EHLO" => "250-fake\r\n250 PIPELINING\r\n".into(),
            "HELO" | "RSET" | "NOOP" => "250 ok\r\n".into(),
            "MAIL" => {
                w.write_all(b"250 ok\r\n")?;
                if matches!(script, Script::DropAfterMail) {
                    return Ok(());
                }
                continue;
            }
            "RCPT" => match script {
                Script::RcptCode(c) => format!("{c} rcpt refused\r\n"),
                _ => "250 ok\r\n".into(),
            },
            "DATA" if matches!(script, Script::RcptCode(_)) => "554 no valid recipients\r\n".into(),
            "DATA" => {
                w.write_all(b"354 go\r\n")?;
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line)? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                }
                if let Some(d) = stall_final.take() {
                    std::thread::sleep(d);
                }
                match script {
                    Script::FinalCode(c) => format!("{c} final refused\r\n"),
                    _ => "250 queued\r\n".into(),
                }
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => "500 what\r\n".into(),
        };
        w.write_all(reply.as_bytes())?;
    }
}

#!/usr/bin/env node
// tls_node_sink.js: a discarding SMTP server on nodemailer's `smtp-server`
// package, a peer for scripts/tls-bench.sh.
//
//   node tls_node_sink.js --listen 127.0.0.1:PORT --cert CERT.pem --key KEY.pem
//
// STARTTLS is offered (smtp-server's default with a key and certificate);
// AUTH is not (no command to offer it with, as smtpsink's default before
// TLS); message data is read and thrown away, then answered 250. No
// reverse DNS of the client (smtp-server's default does one per
// connection) and no logging, so what is measured is SMTP, TLS and the
// event loop. smtp-server waits a fixed 100 ms after each accept before its
// greeting (an "early talker" check, not configurable); that delay, not
// CPU, would cap a new-connection-per-message run at 10 connections/s per
// client connection, so it is taken out here (SMTPConnection.prototype.init
// greets at once); EARLY_TALKER_DELAY=1 in the environment keeps it. The
// line "early-talker-delay: removed|kept" on stderr says which. The
// smtp-server package is found by node's usual module
// resolution (NODE_PATH=.../node_modules from tls-bench.sh). SIGTERM or
// SIGINT closes the listener and exits (open connections are dropped
// after 1 s). Prints "ready HOST:PORT" on stdout once listening.
'use strict';

const fs = require('fs');
const { SMTPServer } = require('smtp-server');

if (process.env.EARLY_TALKER_DELAY === '1') {
    console.error('early-talker-delay: kept');
} else {
    // smtp-server 3.x's init() with the 100 ms timer before
    // connectionReady() taken out; the rest as in the package.
    const { SMTPConnection } = require('smtp-server/lib/smtp-connection.js');
    const proto = SMTPConnection && SMTPConnection.prototype;
    if (proto && typeof proto._setListeners === 'function' && typeof proto.connectionReady === 'function') {
        proto.init = function init() {
            this._setListeners(() => {
                if (this._server.options.maxClients && this._server.connections.size > this._server.options.maxClients) {
                    return this.send(421, this.name + ' Too many connected clients, try again in a moment', false);
                }
                this.connectionReady();
            });
        };
        console.error('early-talker-delay: removed');
    } else {
        console.error('early-talker-delay: kept (this smtp-server has no SMTPConnection._setListeners to patch)');
    }
}

function arg(name) {
    const i = process.argv.indexOf(name);
    if (i < 0 || i + 1 >= process.argv.length) {
        console.error(`usage: tls_node_sink.js --listen HOST:PORT --cert FILE --key FILE (missing ${name})`);
        process.exit(2);
    }
    return process.argv[i + 1];
}

const listen = arg('--listen');
const at = listen.lastIndexOf(':');
const host = listen.slice(0, at);
const port = Number(listen.slice(at + 1));

const server = new SMTPServer({
    secure: false,
    key: fs.readFileSync(arg('--key')),
    cert: fs.readFileSync(arg('--cert')),
    name: 'node-smtp-server.localhost',
    banner: 'tls-bench smtp-server sink',
    disabledCommands: ['AUTH'],
    authOptional: true,
    disableReverseLookup: true,
    logger: false,
    maxClients: 10000,
    size: 64 * 1024 * 1024,
    closeTimeout: 1000,
    onData(stream, _session, callback) {
        stream.on('data', () => {});
        stream.on('end', () => callback(null, 'Message discarded'));
    },
});

server.on('error', (err) => {
    // Per-connection errors (a client that resets) are not fatal.
    if (err && err.code === 'EADDRINUSE') {
        console.error(`tls_node_sink: ${err.message}`);
        process.exit(1);
    }
});

let closing = false;
function stop() {
    if (closing) return;
    closing = true;
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

server.listen(port, host, () => {
    process.stdout.write(`ready ${host}:${port}\n`);
});

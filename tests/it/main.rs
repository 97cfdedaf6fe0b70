//! Integration tests: one binary, one file per surface.

mod amqp;
mod architecture;
mod conformance;
mod deploy;
mod election;
mod faults;
mod fuzzing;
mod hostile;
mod http;
mod kafka;
mod logs;
mod nats;
mod notifier;
mod operations;
mod prometheus;
mod restart;
mod sdk;
mod secrets;
mod support;
mod tap;
mod tls;
mod top;
mod webhook;

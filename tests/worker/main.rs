//! The worker against the real RabbitMQ (and MLflow where noted): routing by error class,
//! topology, shutdown and reconnection. Each test uses its own exchange and queues.

mod helpers;
mod reconnect;
mod routing;
mod schemas;
mod shutdown;
mod topology;

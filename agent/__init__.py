"""runlab-agent: samples the host, runs experiments, and ships everything through a durable outbox."""

"""Where ranks meet: the (group, replica) mesh, FSDP2 sharding, preemption signals, and the exchange transports."""

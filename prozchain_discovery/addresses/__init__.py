"""Our own addresses: what we listen on, what peers see, what we sign and advertise."""

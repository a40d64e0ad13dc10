"""The node proxy: accepts redirected connections and relays them to the gateway with splice."""

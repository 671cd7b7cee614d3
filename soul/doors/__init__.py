"""The soul's network doors: its daemon serving turns over NATS (`daemon`), souls messaging
souls (`peers`), and MCP both ways (`mcp_client` calls other agents, `mcp_server` answers them)."""

"""The soul's network doors: its daemon serving turns over NATS (`daemon`) and OpenAI's chat
completions API over HTTP (`http`), souls messaging
souls (`peers`), and MCP both ways (`mcp_client` calls the agents `mcp_config` reads from mcp.json,
`mcp_server` answers them)."""

from soul.cli import entry

entry()

from soul.launch import entry

entry()

from soul.cli import main

main()

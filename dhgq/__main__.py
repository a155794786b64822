from dhgq.cli import main

main()

from trackhouse.cli import main

main()

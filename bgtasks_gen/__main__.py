from bgtasks_gen.cli import main

main()

from msfusion_ray.cli import exit_now, main

exit_now(main(exiting=True))

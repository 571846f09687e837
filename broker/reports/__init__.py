"""Read models over everything below them: who could read which field, when, and under
which key (``access``). Reports read; they change nothing."""

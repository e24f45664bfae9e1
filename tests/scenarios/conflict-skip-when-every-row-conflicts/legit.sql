UPDATE t SET v = 'legit' WHERE id = 1;

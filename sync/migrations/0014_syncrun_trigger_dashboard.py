from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('sync', '0013_maintain_channels_schedule'),
    ]

    operations = [
        migrations.AlterField(
            model_name='syncrun',
            name='trigger',
            field=models.CharField(choices=[('api', 'API'), ('schedule', 'Schedule'), ('command', 'Command'), ('admin', 'Admin'), ('write', 'Write'), ('push', 'Push'), ('dashboard', 'Dashboard')], max_length=16),
        ),
    ]
